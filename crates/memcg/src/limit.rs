//! cgroup v2 memory limit values, in bytes.
//!
//! A [`Limit`] is what a `memory.max`-style file holds: a number of bytes or
//! `max`. [`Limit::parse`] accepts what one would write into such a file:
//! `max`, a decimal number of bytes, or a decimal number with a one-letter
//! binary suffix (`K`, `M`, `G` or `T`, case-insensitive, multiples of
//! 1024 as in the kernel's `memparse`), surrounded by optional ASCII
//! whitespace (`echo 1G > memory.max` writes `"1G\n"`).
//! [`parse_size_bytes`] accepts the same without `max`.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Size of a page in bytes: the unit limits are enforced in.
pub const PAGE_SIZE: u64 = 4096;

/// The largest page count a page counter holds, as in Linux
/// (`LONG_MAX / PAGE_SIZE`). An unlimited [`Limit`] is this many pages.
pub const PAGE_COUNTER_MAX: u64 = (i64::MAX as u64) / PAGE_SIZE;

/// Reason for input that matches no form of a limit.
const LIMIT_EXPECTED: &str =
    "expected `max`, a number of bytes, or a number with a K, M, G or T suffix";
/// Reason for empty input to [`Limit::parse`].
const LIMIT_EMPTY: &str =
    "expected `max`, a number of bytes, or a number with a K, M, G or T suffix, got an empty string";
/// Reason for input that matches no form of a size.
const SIZE_EXPECTED: &str = "expected a number of bytes, or a number with a K, M, G or T suffix";
/// Reason for empty input to [`parse_size_bytes`].
const SIZE_EMPTY: &str =
    "expected a number of bytes, or a number with a K, M, G or T suffix, got an empty string";
/// Reason for `max` given to [`parse_size_bytes`].
const SIZE_MAX: &str =
    "`max` is not a size; expected a number of bytes, or a number with a K, M, G or T suffix";
/// Reason for `MAX`, `Max`, ... given to [`Limit::parse`].
const LIMIT_MAX_CASE: &str = "expected `max` in lowercase";
/// Reason for a negative number.
const NEGATIVE: &str = "negative sizes are not allowed; expected a number of bytes of 0 or more";
/// Reason for a number with a fractional part.
const FRACTION: &str =
    "fractions are not allowed; expected a whole number of bytes, or a whole number with a K, M, G or T suffix";
/// Reason for letters after the number that are not a known suffix.
const UNKNOWN_SUFFIX: &str =
    "unknown suffix; expected one of the suffixes K, M, G or T (case-insensitive, multiples of 1024)";
/// Reason for a value that does not fit 64 bits.
const OVERFLOW: &str =
    "the size overflows 64 bits; expected at most 18446744073709551615 bytes (just under 16777216T)";

/// A memory limit: a number of bytes, or no limit (`max`).
///
/// Ordered by strictness: byte limits by value, all below [`Limit::Max`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Limit {
    /// A byte limit.
    Bytes(u64),
    /// No limit (`max` in cgroup v2 files).
    Max,
}

impl Limit {
    /// Parses a limit: `max`, a decimal number of bytes (`4096`), or a
    /// decimal number with a `K`, `M`, `G` or `T` suffix (`512M`, `1g`),
    /// case-insensitive, meaning multiples of 1024, 1024², 1024³ and 1024⁴
    /// bytes. Surrounding ASCII whitespace, such as a trailing newline, is
    /// ignored.
    ///
    /// A byte count of `u64::MAX` gives [`Limit::Max`] (see
    /// [`Limit::from_bytes`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidLimit`], saying what was expected, for an empty
    /// string, a negative number, a fraction, an unknown suffix, a value
    /// past `u64::MAX` bytes, or anything else.
    pub fn parse(input: &str) -> Result<Limit> {
        let text = input.trim_ascii();
        if text == "max" {
            return Ok(Limit::Max);
        }
        if text.eq_ignore_ascii_case("max") {
            return Err(invalid(input, LIMIT_MAX_CASE));
        }
        parse_bytes(input, Grammar::Limit).map(Limit::from_bytes)
    }

    /// The limit in bytes, or `None` for [`Limit::Max`].
    pub fn to_bytes(self) -> Option<u64> {
        match self {
            Limit::Bytes(bytes) => Some(bytes),
            Limit::Max => None,
        }
    }

    /// Whether this is [`Limit::Max`], no limit.
    pub fn is_max(self) -> bool {
        matches!(self, Limit::Max)
    }

    /// A limit of `bytes` bytes; `u64::MAX` bytes is [`Limit::Max`].
    pub fn from_bytes(bytes: u64) -> Limit {
        if bytes == u64::MAX {
            Limit::Max
        } else {
            Limit::Bytes(bytes)
        }
    }

    /// The limit in whole pages of [`PAGE_SIZE`] bytes, rounded down, at
    /// most [`PAGE_COUNTER_MAX`]; [`Limit::Max`] is [`PAGE_COUNTER_MAX`] (as
    /// the kernel's `page_counter_memparse`).
    pub(crate) fn as_pages(self) -> u64 {
        match self {
            Limit::Bytes(bytes) => (bytes / PAGE_SIZE).min(PAGE_COUNTER_MAX),
            Limit::Max => PAGE_COUNTER_MAX,
        }
    }
}

impl FromStr for Limit {
    type Err = Error;

    /// Same as [`Limit::parse`].
    fn from_str(input: &str) -> Result<Limit> {
        Limit::parse(input)
    }
}

impl fmt::Display for Limit {
    /// Writes `max` or the byte count in decimal, as cgroup v2 files read.
    /// [`Limit::parse`] parses it back (`Bytes(u64::MAX)` comes back as
    /// [`Limit::Max`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Bytes(bytes) => fmt::Display::fmt(bytes, f),
            Limit::Max => f.pad("max"),
        }
    }
}

/// Parses a size in bytes: a decimal number of bytes (`4096`) or a decimal
/// number with a `K`, `M`, `G` or `T` suffix (`512M`, `1g`), the grammar of
/// [`Limit::parse`] without `max`. Surrounding ASCII whitespace is ignored.
///
/// # Errors
///
/// [`Error::InvalidLimit`], saying what was expected, for an empty string,
/// `max`, a negative number, a fraction, an unknown suffix, a value past
/// `u64::MAX`, or anything else.
pub fn parse_size_bytes(input: &str) -> Result<u64> {
    if input.trim_ascii().eq_ignore_ascii_case("max") {
        return Err(invalid(input, SIZE_MAX));
    }
    parse_bytes(input, Grammar::Size)
}

/// Which parser is running, for error reasons.
#[derive(Clone, Copy)]
enum Grammar {
    /// [`Limit::parse`]: `max` is also accepted.
    Limit,
    /// [`parse_size_bytes`]: sizes only.
    Size,
}

impl Grammar {
    fn expected(self) -> &'static str {
        match self {
            Grammar::Limit => LIMIT_EXPECTED,
            Grammar::Size => SIZE_EXPECTED,
        }
    }

    fn empty(self) -> &'static str {
        match self {
            Grammar::Limit => LIMIT_EMPTY,
            Grammar::Size => SIZE_EMPTY,
        }
    }
}

/// An [`Error::InvalidLimit`] for `input`.
fn invalid(input: &str, reason: &'static str) -> Error {
    Error::InvalidLimit {
        input: input.to_string(),
        reason,
    }
}

/// Parses digits with an optional suffix, after trimming ASCII whitespace.
fn parse_bytes(input: &str, grammar: Grammar) -> Result<u64> {
    let text = input.trim_ascii();
    if text.is_empty() {
        return Err(invalid(input, grammar.empty()));
    }
    let digits_len = text
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(text.len());
    // `digits_len` is at an ASCII byte or the end: a char boundary.
    let Some((digits, rest)) = text.split_at_checked(digits_len) else {
        return Err(invalid(input, grammar.expected()));
    };
    if digits.is_empty() {
        let after_sign = rest.strip_prefix(['-', '.']).unwrap_or("");
        let reason = if !after_sign.starts_with(|c: char| c.is_ascii_digit()) {
            grammar.expected()
        } else if rest.starts_with('-') {
            NEGATIVE
        } else {
            FRACTION
        };
        return Err(invalid(input, reason));
    }
    let shift: u32 = match rest {
        "" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        _ if rest.starts_with('.') => return Err(invalid(input, FRACTION)),
        _ if rest.bytes().all(|b| b.is_ascii_alphabetic()) => {
            return Err(invalid(input, UNKNOWN_SUFFIX))
        }
        _ => return Err(invalid(input, grammar.expected())),
    };
    // `digits` is non-empty ASCII digits: the only failure is overflow.
    let number: u64 = digits.parse().map_err(|_| invalid(input, OVERFLOW))?;
    let multiplier = 1u64
        .checked_shl(shift)
        .ok_or_else(|| invalid(input, OVERFLOW))?;
    number
        .checked_mul(multiplier)
        .ok_or_else(|| invalid(input, OVERFLOW))
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;
    const TIB: u64 = 1024 * GIB;

    fn limit_reason(input: &str) -> &'static str {
        match Limit::parse(input) {
            Err(Error::InvalidLimit { input: got, reason }) => {
                assert_eq!(got, input, "error carries the input");
                reason
            }
            other => panic!("{input:?}: expected InvalidLimit, got {other:?}"),
        }
    }

    fn size_reason(input: &str) -> &'static str {
        match parse_size_bytes(input) {
            Err(Error::InvalidLimit { input: got, reason }) => {
                assert_eq!(got, input, "error carries the input");
                reason
            }
            other => panic!("{input:?}: expected InvalidLimit, got {other:?}"),
        }
    }

    // --- Limit::parse: accepted forms ---

    #[test]
    fn parse_max_returns_max() {
        assert_eq!(Limit::parse("max"), Ok(Limit::Max));
    }

    #[test]
    fn parse_plain_decimal_returns_bytes() {
        assert_eq!(Limit::parse("0"), Ok(Limit::Bytes(0)));
        assert_eq!(Limit::parse("1"), Ok(Limit::Bytes(1)));
        assert_eq!(Limit::parse("4096"), Ok(Limit::Bytes(4096)));
        assert_eq!(Limit::parse("0004096"), Ok(Limit::Bytes(4096)));
        assert_eq!(Limit::parse("4097"), Ok(Limit::Bytes(4097)));
    }

    #[test]
    fn parse_suffixes_multiply_by_powers_of_1024() {
        let cases = [
            ("1K", KIB),
            ("1k", KIB),
            ("512M", 512 * MIB),
            ("512m", 512 * MIB),
            ("1G", GIB),
            ("1g", GIB),
            ("3T", 3 * TIB),
            ("3t", 3 * TIB),
            ("0G", 0),
        ];
        for (input, bytes) in cases {
            assert_eq!(Limit::parse(input), Ok(Limit::Bytes(bytes)), "{input}");
        }
    }

    #[test]
    fn parse_surrounding_whitespace_is_trimmed() {
        assert_eq!(Limit::parse("1G\n"), Ok(Limit::Bytes(GIB)));
        assert_eq!(Limit::parse("  4096\t"), Ok(Limit::Bytes(4096)));
        assert_eq!(Limit::parse("\r\nmax\n"), Ok(Limit::Max));
        assert_eq!(Limit::parse(" \x0c512k "), Ok(Limit::Bytes(512 * KIB)));
    }

    #[test]
    fn parse_u64_max_bytes_returns_max() {
        assert_eq!(Limit::parse("18446744073709551615"), Ok(Limit::Max));
        assert_eq!(
            Limit::parse("18446744073709551614"),
            Ok(Limit::Bytes(u64::MAX - 1))
        );
    }

    #[test]
    fn parse_largest_suffixed_values_are_accepted() {
        assert_eq!(
            Limit::parse("16777215T"),
            Ok(Limit::Bytes(16_777_215 * TIB))
        );
        assert_eq!(
            Limit::parse("17179869183G"),
            Ok(Limit::Bytes(17_179_869_183 * GIB))
        );
        assert_eq!(
            Limit::parse("18014398509481983K"),
            Ok(Limit::Bytes(18_014_398_509_481_983 * KIB))
        );
    }

    #[test]
    fn from_str_parses_like_parse() {
        assert_eq!("512M".parse::<Limit>(), Ok(Limit::Bytes(512 * MIB)));
        assert_eq!("max\n".parse::<Limit>(), Ok(Limit::Max));
        assert_eq!("-1".parse::<Limit>(), Limit::parse("-1"));
    }

    // --- Limit::parse: rejected forms ---

    #[test]
    fn parse_empty_is_rejected() {
        for input in ["", " ", "\n", "\t\r\n"] {
            assert_eq!(limit_reason(input), LIMIT_EMPTY, "{input:?}");
        }
    }

    #[test]
    fn parse_negative_is_rejected_as_negative() {
        for input in ["-1", "-0", "-1G", "-4096\n", "-1.5"] {
            let reason = limit_reason(input);
            assert_eq!(reason, NEGATIVE, "{input:?}");
            assert!(reason.contains("negative sizes"));
        }
    }

    #[test]
    fn parse_fraction_is_rejected_as_fraction() {
        for input in ["1.5", "1.5G", "0.5M", "1.", ".5", ".5G", "1.0"] {
            assert_eq!(limit_reason(input), FRACTION, "{input:?}");
        }
    }

    #[test]
    fn parse_unknown_suffix_is_rejected_as_unknown_suffix() {
        for input in [
            "1P", "1E", "1b", "1B", "1KB", "1Ki", "1KiB", "1GB", "1x", "1kk",
        ] {
            assert_eq!(limit_reason(input), UNKNOWN_SUFFIX, "{input:?}");
        }
    }

    #[test]
    fn parse_overflow_is_rejected_as_overflow() {
        for input in [
            "16777216T",
            "17179869184G",
            "17592186044416M",
            "18014398509481984K",
            "18446744073709551616",
            "99999999999999999999999999999",
            "99999999999999999999999999999G",
        ] {
            let reason = limit_reason(input);
            assert_eq!(reason, OVERFLOW, "{input:?}");
            assert!(reason.contains("overflows"));
        }
    }

    #[test]
    fn parse_max_in_other_case_is_rejected() {
        for input in ["MAX", "Max", "mAx\n"] {
            assert_eq!(limit_reason(input), LIMIT_MAX_CASE, "{input:?}");
        }
    }

    #[test]
    fn parse_malformed_is_rejected_with_expected_forms() {
        let cases = [
            "K",
            "G",
            "maxx",
            "max max",
            "unlimited",
            "+1",
            "+1G",
            "1 G",
            "1G1",
            "1e9",
            "0x10",
            "1_000",
            "1,000",
            "1-2",
            "--1",
            "-",
            "-max",
            ".",
            "٣",
            "1G\u{a0}",
            "1\u{3000}",
            "1Gé",
        ];
        for input in cases {
            let reason = limit_reason(input);
            assert_eq!(reason, LIMIT_EXPECTED, "{input:?}");
        }
    }

    #[test]
    fn parse_error_reasons_are_lowercase_and_say_expected() {
        for reason in [
            LIMIT_EXPECTED,
            LIMIT_EMPTY,
            SIZE_EXPECTED,
            SIZE_EMPTY,
            SIZE_MAX,
            LIMIT_MAX_CASE,
            NEGATIVE,
            FRACTION,
            UNKNOWN_SUFFIX,
            OVERFLOW,
        ] {
            assert!(reason.contains("expected"), "{reason}");
            let first = reason.chars().next().unwrap();
            assert!(!first.is_uppercase(), "{reason}");
        }
    }

    #[test]
    fn parse_error_displays_input_and_reason() {
        let err = Limit::parse("1.5G").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid limit \"1.5G\": {FRACTION}")
        );
    }

    // --- parse_size_bytes ---

    #[test]
    fn parse_size_bytes_accepted_forms_return_bytes() {
        let cases = [
            ("0", 0),
            ("4096", 4096),
            ("4k", 4 * KIB),
            ("512M\n", 512 * MIB),
            (" 1G ", GIB),
            ("2t", 2 * TIB),
            ("18446744073709551615", u64::MAX),
            ("16777215T", 16_777_215 * TIB),
        ];
        for (input, bytes) in cases {
            assert_eq!(parse_size_bytes(input), Ok(bytes), "{input:?}");
        }
    }

    #[test]
    fn parse_size_bytes_max_is_rejected() {
        for input in ["max", "max\n", "MAX"] {
            assert_eq!(size_reason(input), SIZE_MAX, "{input:?}");
        }
    }

    #[test]
    fn parse_size_bytes_rejected_forms_give_specific_reasons() {
        let cases = [
            ("", SIZE_EMPTY),
            ("\n", SIZE_EMPTY),
            ("-1", NEGATIVE),
            ("1.5K", FRACTION),
            ("1P", UNKNOWN_SUFFIX),
            ("16777216T", OVERFLOW),
            ("18446744073709551616", OVERFLOW),
            ("abc", SIZE_EXPECTED),
            ("1 K", SIZE_EXPECTED),
            ("maxx", SIZE_EXPECTED),
        ];
        for (input, reason) in cases {
            assert_eq!(size_reason(input), reason, "{input:?}");
        }
        assert!(!SIZE_EXPECTED.contains("max"));
    }

    // --- accessors ---

    #[test]
    fn to_bytes_bytes_returns_some_and_max_returns_none() {
        assert_eq!(Limit::Bytes(7).to_bytes(), Some(7));
        assert_eq!(Limit::Bytes(u64::MAX).to_bytes(), Some(u64::MAX));
        assert_eq!(Limit::Max.to_bytes(), None);
    }

    #[test]
    fn is_max_only_max_returns_true() {
        assert!(Limit::Max.is_max());
        assert!(!Limit::Bytes(0).is_max());
        assert!(!Limit::Bytes(u64::MAX).is_max());
    }

    #[test]
    fn from_bytes_u64_max_returns_max() {
        assert_eq!(Limit::from_bytes(u64::MAX), Limit::Max);
        assert_eq!(Limit::from_bytes(u64::MAX - 1), Limit::Bytes(u64::MAX - 1));
        assert_eq!(Limit::from_bytes(0), Limit::Bytes(0));
    }

    #[test]
    fn as_pages_partial_page_rounds_down() {
        assert_eq!(Limit::Bytes(0).as_pages(), 0);
        assert_eq!(Limit::Bytes(1).as_pages(), 0);
        assert_eq!(Limit::Bytes(PAGE_SIZE - 1).as_pages(), 0);
        assert_eq!(Limit::Bytes(PAGE_SIZE).as_pages(), 1);
        assert_eq!(Limit::Bytes(PAGE_SIZE + 1).as_pages(), 1);
        assert_eq!(Limit::Bytes(2 * PAGE_SIZE - 1).as_pages(), 1);
        assert_eq!(Limit::Bytes(GIB).as_pages(), 262_144);
    }

    #[test]
    fn as_pages_max_returns_page_counter_max() {
        assert_eq!(Limit::Max.as_pages(), PAGE_COUNTER_MAX);
        assert_eq!(PAGE_COUNTER_MAX, 2_251_799_813_685_247);
    }

    #[test]
    fn as_pages_huge_bytes_clamps_to_page_counter_max() {
        let boundary = PAGE_COUNTER_MAX * PAGE_SIZE;
        assert_eq!(Limit::Bytes(boundary).as_pages(), PAGE_COUNTER_MAX);
        assert_eq!(Limit::Bytes(boundary - 1).as_pages(), PAGE_COUNTER_MAX - 1);
        assert_eq!(
            Limit::Bytes(boundary + PAGE_SIZE).as_pages(),
            PAGE_COUNTER_MAX
        );
        assert_eq!(Limit::Bytes(u64::MAX).as_pages(), PAGE_COUNTER_MAX);
    }

    // --- Display, ordering, serde ---

    #[test]
    fn display_prints_max_or_bytes() {
        assert_eq!(Limit::Max.to_string(), "max");
        assert_eq!(Limit::Bytes(0).to_string(), "0");
        assert_eq!(Limit::Bytes(GIB).to_string(), "1073741824");
        assert_eq!(
            format!("{:>5}|{:<5}|", Limit::Max, Limit::Bytes(7)),
            "  max|7    |"
        );
    }

    #[test]
    fn display_then_parse_round_trips() {
        let limits = [
            Limit::Max,
            Limit::Bytes(0),
            Limit::Bytes(1),
            Limit::Bytes(4095),
            Limit::Bytes(GIB),
            Limit::Bytes(16_777_215 * TIB),
            Limit::Bytes(u64::MAX - 1),
        ];
        for limit in limits {
            assert_eq!(Limit::parse(&limit.to_string()), Ok(limit), "{limit}");
            assert_eq!(Limit::parse(&format!("{limit}\n")), Ok(limit), "{limit}");
        }
        assert_eq!(
            Limit::parse(&Limit::Bytes(u64::MAX).to_string()),
            Ok(Limit::Max)
        );
    }

    #[test]
    fn cmp_bytes_orders_below_max() {
        assert!(Limit::Bytes(0) < Limit::Bytes(1));
        assert!(Limit::Bytes(u64::MAX) < Limit::Max);
        assert_eq!(
            Limit::Bytes(5).max(Limit::Max).min(Limit::Bytes(9)),
            Limit::Bytes(9)
        );
    }

    #[test]
    #[cfg(feature = "serde")]
    fn serde_json_round_trips() {
        for limit in [Limit::Max, Limit::Bytes(0), Limit::Bytes(GIB)] {
            let json = serde_json::to_string(&limit).unwrap();
            assert_eq!(
                serde_json::from_str::<Limit>(&json).unwrap(),
                limit,
                "{json}"
            );
        }
        assert_eq!(serde_json::to_string(&Limit::Max).unwrap(), r#""Max""#);
        assert_eq!(
            serde_json::to_string(&Limit::Bytes(5)).unwrap(),
            r#"{"Bytes":5}"#
        );
    }

    // --- properties ---

    proptest::proptest! {
        #[test]
        fn parse_any_u64_round_trips_through_display(bytes in proptest::num::u64::ANY) {
            proptest::prop_assert_eq!(
                Limit::parse(&Limit::Bytes(bytes).to_string()),
                Ok(Limit::from_bytes(bytes))
            );
            proptest::prop_assert_eq!(parse_size_bytes(&bytes.to_string()), Ok(bytes));
        }

        #[test]
        fn parse_suffixed_number_matches_checked_multiplication(
            number in proptest::num::u64::ANY,
            suffix_index in 0usize..4,
        ) {
            let (suffix, multiplier) = [("K", KIB), ("M", MIB), ("G", GIB), ("T", TIB)][suffix_index];
            let parsed = parse_size_bytes(&format!("{number}{suffix}"));
            match number.checked_mul(multiplier) {
                Some(bytes) => proptest::prop_assert_eq!(parsed, Ok(bytes)),
                None => proptest::prop_assert_eq!(
                    parsed,
                    Err(Error::InvalidLimit { input: format!("{number}{suffix}"), reason: OVERFLOW })
                ),
            }
        }

        #[test]
        fn parse_arbitrary_input_never_panics(input in "\\PC{0,12}") {
            let _ = Limit::parse(&input);
            let _ = parse_size_bytes(&input);
        }
    }
}
