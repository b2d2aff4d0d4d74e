//! The four programs, built from crates no one here wrote: `serde_json`,
//! `regex`, std's maps, `rayon`. Each is deterministic (seeded), sized by a
//! scale factor, allocation-heavy in the way typical uses of those crates
//! are, and returns data it keeps alive ([`Held`]) so that the memcg child
//! can compare the group's charge with what is still held.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use rayon::prelude::*;
use regex::Regex;
use serde_json::Value;

/// Bytes the memcg allocator adds to each block's charge: the 8-byte
/// trailer of `memcg::MemcgAlloc` (the default), 0 for
/// `memcg::MemcgMimalloc`. Set once by the child before it runs anything.
static PER_BLOCK_OVERHEAD_BYTES: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(memcg::TRAILER_BYTES);

/// Sets what [`charged_bytes`] adds per block (see
/// `PER_BLOCK_OVERHEAD_BYTES`).
pub fn set_per_block_overhead_bytes(bytes: usize) {
    PER_BLOCK_OVERHEAD_BYTES.store(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// What [`charged_bytes`] adds per block.
pub fn per_block_overhead_bytes() -> usize {
    PER_BLOCK_OVERHEAD_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Bytes the memcg allocator charges for an allocation of `size_bytes`:
/// the size plus the per-block overhead (the 8-byte
/// trailer of `memcg::MemcgAlloc`, nothing for `memcg::MemcgMimalloc`); 0
/// for no allocation.
pub fn charged_bytes(size_bytes: usize) -> u64 {
    if size_bytes == 0 {
        0
    } else {
        (size_bytes + per_block_overhead_bytes()) as u64
    }
}

/// The workloads, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Generate a JSON document, then parse it to `serde_json::Value` and
    /// serialize it back, several rounds.
    Json,
    /// Generate log text, then `find_iter`, `captures_iter` and
    /// `replace_all` with several regexes.
    Regex,
    /// Build, query and shrink `BTreeMap<String, String>` and
    /// `HashMap<String, Vec<String>>`.
    Maps,
    /// rayon: parallel generation, `par_sort_unstable`, `par_sort` and a
    /// `par_iter().map(..).collect()` allocating per element.
    Rayon,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 4] = [
        Workload::Json,
        Workload::Regex,
        Workload::Maps,
        Workload::Rayon,
    ];

    /// The lowercase name (`json`, `regex`, `maps`, `rayon`).
    pub fn name(self) -> &'static str {
        match self {
            Workload::Json => "json",
            Workload::Regex => "regex",
            Workload::Maps => "maps",
            Workload::Rayon => "rayon",
        }
    }

    /// Runs the workload at `scale` (1.0: roughly 0.3–1.5 s in release on
    /// a 2-core EPYC VM). `pool` runs the parallel parts (only the rayon
    /// workload uses it).
    pub fn run(self, scale: f64, pool: &rayon::ThreadPool) -> Held {
        match self {
            Workload::Json => Held::Json(json(scale)),
            Workload::Regex => Held::Regex(regex(scale)),
            Workload::Maps => Held::Maps(maps(scale)),
            Workload::Rayon => Held::Rayon(pool.install(|| rayon(scale))),
        }
    }
}

/// What a workload keeps alive when it returns.
#[derive(Debug)]
pub enum Held {
    /// The last parsed document.
    Json(Value),
    /// The rewritten text and the parsed records.
    Regex(RegexHeld),
    /// Both maps.
    Maps(MapsHeld),
    /// The strings made by the last parallel `map`.
    Rayon(Vec<String>),
}

/// What the regex workload keeps.
#[derive(Debug)]
pub struct RegexHeld {
    /// The text after the last `replace_all`.
    pub text: String,
    /// One record per log line.
    pub records: Vec<LogRecord>,
}

/// A log line taken apart by `captures`.
#[derive(Debug)]
pub struct LogRecord {
    /// `user=` value.
    pub user: String,
    /// `action=` value.
    pub action: String,
    /// `status=` value.
    pub status: u16,
}

/// What the maps workload keeps.
#[derive(Debug)]
pub struct MapsHeld {
    /// Keys to values, after removals.
    pub ordered: BTreeMap<String, String>,
    /// Prefix to the words with it, after removals.
    pub grouped: HashMap<String, Vec<String>>,
}

/// The heap bytes a [`Held`] value holds, as `MemcgAlloc` charges them,
/// counted by walking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HeldEstimate {
    /// Bytes counted.
    pub bytes: u64,
    /// Whether `bytes` is exact (every allocation seen), or a lower bound
    /// (map nodes and hash tables, whose sizes are private, left out).
    pub exact: bool,
}

impl Held {
    /// Counts the bytes this value holds (see [`HeldEstimate`]).
    pub fn estimate(&self) -> HeldEstimate {
        let s = |s: &String| charged_bytes(s.capacity());
        match self {
            Held::Json(v) => HeldEstimate {
                bytes: value_bytes(v),
                exact: false,
            },
            Held::Regex(h) => {
                let recs = charged_bytes(h.records.capacity() * std::mem::size_of::<LogRecord>());
                let fields: u64 = h.records.iter().map(|r| s(&r.user) + s(&r.action)).sum();
                HeldEstimate {
                    bytes: s(&h.text) + recs + fields,
                    exact: true,
                }
            }
            Held::Maps(h) => {
                let ordered: u64 = h.ordered.iter().map(|(k, v)| s(k) + s(v)).sum();
                let grouped: u64 = h
                    .grouped
                    .iter()
                    .map(|(k, v)| {
                        s(k) + charged_bytes(v.capacity() * std::mem::size_of::<String>())
                            + v.iter().map(s).sum::<u64>()
                    })
                    .sum();
                HeldEstimate {
                    bytes: ordered + grouped,
                    exact: false,
                }
            }
            Held::Rayon(v) => HeldEstimate {
                bytes: charged_bytes(v.capacity() * std::mem::size_of::<String>())
                    + v.iter().map(s).sum::<u64>(),
                exact: true,
            },
        }
    }
}

/// Lower bound of a `Value`'s heap bytes (object nodes left out).
fn value_bytes(v: &Value) -> u64 {
    match v {
        Value::String(s) => charged_bytes(s.capacity()),
        Value::Array(a) => {
            charged_bytes(a.capacity() * std::mem::size_of::<Value>())
                + a.iter().map(value_bytes).sum::<u64>()
        }
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| charged_bytes(k.capacity()) + value_bytes(v))
            .sum(),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

/// splitmix64: a small deterministic generator (no `rand` dependency).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A lowercase word of `min_len..=max_len` letters.
    pub fn word(&mut self, min_len: u64, max_len: u64) -> String {
        let len = min_len + self.below(max_len - min_len + 1);
        (0..len)
            .map(|_| (b'a' + self.below(26) as u8) as char)
            .collect()
    }
}

/// `base × scale`, at least 1.
fn scaled(base: usize, scale: f64) -> usize {
    ((base as f64 * scale) as usize).max(1)
}

const CITIES: [&str; 6] = ["Lisbon", "Oslo", "Kyoto", "Quito", "Accra", "Perth"];
const EVENTS: [&str; 5] = ["login", "logout", "purchase", "refund", "view"];

/// The JSON workload: a document of records (ids, names, tags, a nested
/// address, an event history), parsed to `Value` and serialized back
/// (compact and pretty in turn), 4 rounds.
pub fn json(scale: f64) -> Value {
    let records = scaled(30_000, scale);
    let mut rng = Rng::new(0x4a53_4f4e);
    let mut text = String::from("[");
    for i in 0..records {
        if i > 0 {
            text.push(',');
        }
        let name = rng.word(4, 12);
        let _ = write!(
            text,
            r#"{{"id":{i},"name":"{name}","email":"{name}@example.com","active":{},"score":{:.3},"tags":["#,
            rng.below(2) == 0,
            rng.below(1_000_000) as f64 / 7.0,
        );
        for t in 0..rng.below(8) {
            if t > 0 {
                text.push(',');
            }
            let _ = write!(text, r#""tag-{}""#, rng.below(100));
        }
        let _ = write!(
            text,
            r#"],"address":{{"street":"{} street {}","city":"{}","zip":"{:05}"}},"history":["#,
            rng.word(5, 10),
            rng.below(500),
            CITIES[rng.below(CITIES.len() as u64) as usize],
            rng.below(100_000),
        );
        for e in 0..rng.below(6) {
            if e > 0 {
                text.push(',');
            }
            let _ = write!(
                text,
                r#"{{"ts":{},"event":"{}","amount":{:.2}}}"#,
                1_700_000_000 + rng.below(10_000_000),
                EVENTS[rng.below(EVENTS.len() as u64) as usize],
                rng.below(100_000) as f64 / 100.0,
            );
        }
        text.push_str("]}");
    }
    text.push(']');

    let mut value = Value::Null;
    for round in 0..4 {
        value = serde_json::from_str(&text).expect("the generated JSON parses");
        text = if round % 2 == 0 {
            serde_json::to_string(&value).expect("a Value serializes")
        } else {
            serde_json::to_string_pretty(&value).expect("a Value serializes")
        };
    }
    value
}

/// The regex workload: log lines, then counting IPv4 addresses
/// (`find_iter`), parsing every line into a [`LogRecord`] (`captures`),
/// collecting the `key=value` pairs of error lines (`captures_iter`), and
/// rewriting dates and levels (`replace_all`, with a template and with a
/// closure), 3 rounds.
pub fn regex(scale: f64) -> RegexHeld {
    let lines = scaled(60_000, scale);
    let mut rng = Rng::new(0x5245_4745);
    let mut text = String::new();
    for _ in 0..lines {
        let _ = writeln!(
            text,
            "2024-{:02}-{:02} {:02}:{:02}:{:02} {} user={}{} ip={}.{}.{}.{} action={} status={} bytes={} msg={}",
            1 + rng.below(12),
            1 + rng.below(28),
            rng.below(24),
            rng.below(60),
            rng.below(60),
            ["INFO", "WARN", "ERROR", "DEBUG"][rng.below(4) as usize],
            rng.word(3, 8),
            rng.below(100),
            rng.below(256),
            rng.below(256),
            rng.below(256),
            rng.below(256),
            EVENTS[rng.below(EVENTS.len() as u64) as usize],
            [200, 201, 301, 404, 500][rng.below(5) as usize],
            rng.below(100_000),
            rng.word(5, 30),
        );
    }

    let ip = Regex::new(r"\b(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\b").expect("valid regex");
    let line_re = Regex::new(r"user=(?P<user>\w+) .*action=(?P<action>\w+) status=(?P<status>\d+)")
        .expect("valid regex");
    let kv = Regex::new(r"(\w+)=(\S+)").expect("valid regex");
    let date = Regex::new(r"(\d{4})-(\d{2})-(\d{2})").expect("valid regex");
    let level = Regex::new(r"\b(WARN|ERROR)\b").expect("valid regex");
    let back = Regex::new(r"(\d{2})/(\d{2})/(\d{4})").expect("valid regex");

    let mut records = Vec::new();
    for _ in 0..3 {
        let ips = ip.find_iter(&text).count();
        assert!(ips >= lines, "every line has an address");
        records = text
            .lines()
            .filter_map(|l| {
                let c = line_re.captures(l)?;
                Some(LogRecord {
                    user: c["user"].to_string(),
                    action: c["action"].to_string(),
                    status: c["status"].parse().ok()?,
                })
            })
            .collect();
        let errors: Vec<(String, String)> = text
            .lines()
            .filter(|l| l.contains("ERROR"))
            .flat_map(|l| {
                kv.captures_iter(l)
                    .map(|c| (c[1].to_string(), c[2].to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(!errors.is_empty() || lines < 10, "some lines are errors");
        let dated = date.replace_all(&text, "$3/$2/$1").into_owned();
        text = level
            .replace_all(&dated, |c: &regex::Captures<'_>| c[1].to_lowercase())
            .into_owned();
        // The next round parses the rewritten text back into ISO dates.
        text = back.replace_all(&text, "$3-$2-$1").into_owned();
        text = text
            .replace(" warn ", " WARN ")
            .replace(" error ", " ERROR ");
    }
    RegexHeld { text, records }
}

/// The maps workload: 3 rounds of building a `BTreeMap<String, String>`
/// (inserts, hits and misses by freshly formatted keys, removal of a
/// third, overwrites) and a `HashMap<String, Vec<String>>` grouping words
/// by prefix (pushes, lookups, removal of a fifth of the groups).
pub fn maps(scale: f64) -> MapsHeld {
    let n = scaled(150_000, scale);
    let mut rng = Rng::new(0x4d41_5053);
    let mut ordered = BTreeMap::new();
    let mut grouped: HashMap<String, Vec<String>> = HashMap::new();
    for round in 0..3 {
        ordered = BTreeMap::new();
        for i in 0..n {
            let key = format!("key-{:012x}", rng.below(4 * n as u64));
            ordered.insert(key, format!("value-{round}-{i}-{}", rng.word(2, 12)));
        }
        let mut hits = 0usize;
        for _ in 0..n {
            let key = format!("key-{:012x}", rng.below(4 * n as u64));
            if let Some(v) = ordered.get(&key) {
                hits += v.len() & 1;
            }
        }
        std::hint::black_box(hits);
        let doomed: Vec<String> = ordered.keys().step_by(3).cloned().collect();
        for k in &doomed {
            ordered.remove(k);
        }
        for (i, v) in ordered.values_mut().enumerate().filter(|(i, _)| i % 4 == 0) {
            *v = format!("{v}/updated-{i}");
        }

        grouped = HashMap::new();
        for _ in 0..n {
            let w = rng.word(3, 14);
            grouped.entry(w[..3].to_string()).or_default().push(w);
        }
        let mut total = 0usize;
        for _ in 0..n / 4 {
            let probe = rng.word(3, 3);
            total += grouped.get(&probe).map_or(0, Vec::len);
        }
        std::hint::black_box(total);
        let keys: Vec<String> = grouped.keys().cloned().collect();
        for k in keys.iter().filter(|k| k.as_bytes()[0] % 5 == 0) {
            grouped.remove(k);
        }
    }
    MapsHeld { ordered, grouped }
}

/// The rayon workload, run inside the pool: strings generated in
/// parallel, sorted with `par_sort_unstable` and with `par_sort`
/// (stable; allocates a merge buffer), then a parallel `map` that formats
/// a new string per element, collected to a `Vec`.
pub fn rayon(scale: f64) -> Vec<String> {
    let n = scaled(1_000_000, scale);
    let mut words: Vec<String> = (0..n as u64)
        .into_par_iter()
        .map(|i| Rng::new(0x5241_594f ^ i.wrapping_mul(0x9E37_79B9)).word(6, 40))
        .collect();
    let mut copy = words.clone();
    copy.par_sort_unstable();
    words.par_sort();
    assert!(words == copy, "both sorts agree");
    drop(copy);
    let mapped: Vec<String> = words
        .par_iter()
        .enumerate()
        .map(|(i, w)| format!("{i:08}:{w}:{}", w.len()))
        .collect();
    let upper: Vec<String> = mapped
        .par_iter()
        .filter(|s| s.ends_with('7'))
        .map(|s| s.to_uppercase())
        .collect();
    std::hint::black_box(upper.len());
    mapped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charged_bytes_adds_the_trailer_to_the_size() {
        assert_eq!(charged_bytes(0), 0);
        assert_eq!(charged_bytes(1), 9);
        assert_eq!(charged_bytes(8), 16);
        assert_eq!(charged_bytes(9), 17);
    }

    #[test]
    fn workloads_are_deterministic_at_small_scale() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a pool");
        for w in Workload::ALL {
            let a = w.run(0.01, &pool).estimate();
            let b = w.run(0.01, &pool).estimate();
            assert_eq!(a, b, "{}", w.name());
            assert!(a.bytes > 0, "{}", w.name());
        }
    }
}
