//! The runner (`workloads`): runs each workload in child processes,
//! alternating `workloads-mimalloc` and `workloads-memcg`, and reports
//! wall time (measured inside the child around the workload alone) and
//! peak RSS (`wait4`'s `ru_maxrss` of that child) with min/median/max,
//! the memcg/mimalloc ratios of the medians, and the spread of the
//! ratios within each repetition (its two runs back to back). The CPU
//! time of the same span (`getrusage` in the child: user and system, every
//! thread) is reported beside it: the kernel zeroing fresh pages is system
//! time, which swings from run to run on a shared host and can move a
//! wall-time median by tens of percent, while the user time holds the
//! program's and the allocator's own work.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::Parser;

use crate::child::{exit, Accuracy, ChildReport, MemcgReport, QUICK_SCALE};
use crate::workloads::Workload;

/// Name of the bare-mimalloc child binary.
pub const MIMALLOC_BIN: &str = "workloads-mimalloc";
/// Name of the memcg child binary (`MemcgAlloc<mimalloc>`).
pub const MEMCG_BIN: &str = "workloads-memcg";
/// Name of the memcg child binary on `MemcgMimalloc`.
pub const MEMCG_HEAPS_BIN: &str = "workloads-memcg-heaps";

/// Which memcg allocator the memcg child uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemcgVariant {
    /// `MemcgAlloc<mimalloc>`: an 8-byte trailer per block.
    #[default]
    Trailer,
    /// `MemcgMimalloc`: one mimalloc heap per objcg, no trailer.
    Heaps,
}

impl MemcgVariant {
    /// The child binary's name.
    pub fn bin(self) -> &'static str {
        match self {
            MemcgVariant::Trailer => MEMCG_BIN,
            MemcgVariant::Heaps => MEMCG_HEAPS_BIN,
        }
    }

    /// The allocator's name, for reports.
    pub fn allocator(self) -> &'static str {
        match self {
            MemcgVariant::Trailer => "MemcgAlloc<mimalloc>",
            MemcgVariant::Heaps => "MemcgMimalloc",
        }
    }
}

/// Arguments of the runner.
#[derive(Debug, Parser)]
#[command(
    about = "Real programs under memcg's MemcgAlloc<mimalloc> against bare mimalloc",
    after_help = "Run through `cargo run --release -p memcg-workloads --bin workloads`: the runner \
                  then builds its two children first (cargo sets CARGO). Run directly, it needs \
                  `cargo build --release -p memcg-workloads --bins` first."
)]
pub struct RunnerArgs {
    /// Runs per allocator and workload (interleaved mimalloc, memcg, ...).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Size factor passed to the children (1.0: roughly 0.3–1.5 s each).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Tiny sizes and one rep, for CI.
    #[arg(long)]
    pub quick: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Workloads to run (default: all), comma-separated.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub workload: Vec<Workload>,
    /// Threads of the children's rayon pools.
    #[arg(long)]
    pub threads: Option<usize>,
    /// The memcg allocator to measure against bare mimalloc.
    #[arg(long, value_enum, default_value_t = MemcgVariant::Trailer)]
    pub memcg: MemcgVariant,
    /// Skip the extra memcg run per workload that samples accuracy.
    #[arg(long)]
    pub no_accuracy: bool,
}

/// What can go wrong in the runner.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A child binary is not next to the runner.
    MissingBinary {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The runner's own path is unknown.
    CurrentExe(std::io::Error),
    /// A child could not be started, read or waited for.
    Child {
        /// The child's path.
        path: PathBuf,
        /// What failed.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A child exited with a code other than 0 and 1.
    ChildFailed {
        /// The child's command line.
        command: String,
        /// How it ended.
        status: String,
    },
    /// A child printed something that is not a report.
    BadOutput {
        /// The child's command line.
        command: String,
        /// The parse error.
        reason: String,
    },
    /// Bad arguments.
    Usage(String),
    /// Building the children with cargo failed.
    Build(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::MissingBinary { path } => write!(
                f,
                "child binary {} not found; build all three first with \
                 `cargo build --release -p memcg-workloads --bins`",
                path.display()
            ),
            Error::CurrentExe(e) => write!(f, "cannot find the runner's own path: {e}"),
            Error::Build(what) => write!(
                f,
                "building the child binaries failed ({what}); run \
                 `cargo build --release -p memcg-workloads --bins` to see why"
            ),
            Error::Child { path, what, source } => {
                write!(f, "cannot {what} child {}: {source}", path.display())
            }
            Error::ChildFailed { command, status } => {
                write!(
                    f,
                    "child `{command}` failed ({status}); its stderr is above"
                )
            }
            Error::BadOutput { command, reason } => {
                write!(f, "child `{command}` printed no valid report: {reason}")
            }
            Error::Usage(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

/// One child run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    /// The child's report.
    pub report: ChildReport,
    /// `ru_maxrss` of the child, in KiB.
    pub maxrss_kib: u64,
}

/// min, median, max.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Spread {
    /// Smallest.
    pub min: f64,
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (all 0 when empty).
    pub fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let Some((&min, &max)) = v.first().zip(v.last()) else {
            return Spread {
                min: 0.0,
                median: 0.0,
                max: 0.0,
            };
        };
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Spread { min, median, max }
    }
}

/// Results of one workload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkloadResult {
    /// Workload name.
    pub workload: String,
    /// Wall time of the mimalloc child, ms.
    pub mimalloc_wall_ms: Spread,
    /// Wall time of the memcg child, ms.
    pub memcg_wall_ms: Spread,
    /// Peak RSS of the mimalloc child, MiB.
    pub mimalloc_rss_mib: Spread,
    /// Peak RSS of the memcg child, MiB.
    pub memcg_rss_mib: Spread,
    /// memcg / mimalloc, medians of wall time.
    pub wall_ratio: f64,
    /// memcg / mimalloc of wall time within each repetition (the two
    /// runs of a repetition are back to back, so a slow stretch of the
    /// machine weighs on both): their spread.
    pub paired_wall_ratio: Spread,
    /// memcg / mimalloc, medians of peak RSS.
    pub rss_ratio: f64,
    /// User CPU time of the mimalloc child over the workload, ms.
    pub mimalloc_user_ms: Spread,
    /// User CPU time of the memcg child over the workload, ms.
    pub memcg_user_ms: Spread,
    /// memcg / mimalloc of user CPU time within each repetition: their
    /// spread.
    pub paired_user_ratio: Spread,
    /// System CPU time of the mimalloc child over the workload, ms.
    pub mimalloc_sys_ms: Spread,
    /// System CPU time of the memcg child over the workload, ms.
    pub memcg_sys_ms: Spread,
    /// The memcg child's report of its last timed run (charges, checks).
    pub memcg: Option<MemcgReport>,
    /// The sampling run's accuracy.
    pub accuracy: Option<Accuracy>,
    /// Whether every check of every memcg run passed.
    pub pass: bool,
    /// Every run, in order.
    pub runs: Vec<Run>,
}

/// When started by `cargo run` (cargo sets `CARGO`), builds the two child
/// binaries with the runner's own profile first, so that one command
/// measures the current sources and never stale children.
fn build_children() -> Result<(), Error> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "memcg-workloads", "--bins"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let status = cmd.status().map_err(|e| Error::Build(e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Build(status.to_string()))
    }
}

fn sibling(dir: &Path, name: &str) -> Result<PathBuf, Error> {
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingBinary { path })
    }
}

/// Runs `path args`, returns its report and peak RSS.
fn run_child(path: &Path, args: &[String]) -> Result<Run, Error> {
    let command = format!("{} {}", path.display(), args.join(" "));
    let mut child = Command::new(path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| Error::Child {
            path: path.to_path_buf(),
            what: "start",
            source,
        })?;
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout
            .read_to_string(&mut out)
            .map_err(|source| Error::Child {
                path: path.to_path_buf(),
                what: "read the output of",
                source,
            })?;
    }
    let (status, maxrss_kib) = wait4(child.id()).map_err(|source| Error::Child {
        path: path.to_path_buf(),
        what: "wait for",
        source,
    })?;
    let code = match status {
        WaitStatus::Exited(c) => c,
        WaitStatus::Signaled(s) => {
            return Err(Error::ChildFailed {
                command,
                status: format!("killed by signal {s}"),
            })
        }
    };
    if code != exit::OK && code != exit::CHECK_FAILED {
        return Err(Error::ChildFailed {
            command,
            status: format!("exit code {code}"),
        });
    }
    let line = out.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let report: ChildReport = serde_json::from_str(line).map_err(|e| Error::BadOutput {
        command: command.clone(),
        reason: e.to_string(),
    })?;
    Ok(Run { report, maxrss_kib })
}

enum WaitStatus {
    Exited(i32),
    Signaled(i32),
}

/// Reaps `pid` with `wait4`; returns how it ended and its `ru_maxrss`.
fn wait4(pid: u32) -> std::io::Result<(WaitStatus, u64)> {
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is a plain C struct of integers and `timeval`s, for
    // which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY:
        // - `status` and `usage` are valid, writable and live for the call.
        // - `pid` is our own child, not yet reaped (std's `Child` is never
        //   waited on).
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if r == pid as libc::pid_t {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let ws = if libc::WIFEXITED(status) {
        WaitStatus::Exited(libc::WEXITSTATUS(status))
    } else {
        WaitStatus::Signaled(libc::WTERMSIG(status))
    };
    Ok((ws, usage.ru_maxrss.max(0) as u64))
}

/// Runs everything `args` asks for; returns the results per workload.
///
/// # Errors
/// See [`Error`]: missing sibling binaries (build them first), children
/// that cannot be run or crash.
pub fn measure(args: &RunnerArgs) -> Result<Vec<WorkloadResult>, Error> {
    let scale = if args.quick { QUICK_SCALE } else { args.scale };
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(Error::Usage(format!(
            "--scale must be a positive number, got {scale}"
        )));
    }
    let reps = if args.quick { 1 } else { args.reps };
    if reps == 0 {
        return Err(Error::Usage("--reps must be at least 1".to_string()));
    }
    build_children()?;
    let exe = std::env::current_exe().map_err(Error::CurrentExe)?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let plain = sibling(dir, MIMALLOC_BIN)?;
    let memcg = sibling(dir, args.memcg.bin())?;
    let workloads = if args.workload.is_empty() {
        Workload::ALL.to_vec()
    } else {
        args.workload.clone()
    };

    let mut results = Vec::new();
    for w in workloads {
        let mut child_args = vec![
            "--workload".to_string(),
            w.name().to_string(),
            "--scale".to_string(),
            scale.to_string(),
        ];
        if let Some(t) = args.threads {
            child_args.extend(["--threads".to_string(), t.to_string()]);
        }
        let mut runs = Vec::new();
        for _ in 0..reps {
            runs.push(run_child(&plain, &child_args)?);
            runs.push(run_child(&memcg, &child_args)?);
        }
        let accuracy_run = if args.no_accuracy {
            None
        } else {
            let mut a = child_args.clone();
            a.push("--sample".to_string());
            Some(run_child(&memcg, &a)?)
        };
        results.push(summarize(w, runs, accuracy_run));
    }
    Ok(results)
}

fn summarize(w: Workload, runs: Vec<Run>, accuracy_run: Option<Run>) -> WorkloadResult {
    let pick = |alloc: &str, f: fn(&Run) -> f64| -> Spread {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.report.allocator == alloc)
            .map(f)
            .collect();
        Spread::of(&v)
    };
    let wall = |r: &Run| r.report.wall_ns as f64 / 1e6;
    let rss = |r: &Run| r.maxrss_kib as f64 / 1024.0;
    let user = |r: &Run| r.report.user_ns as f64 / 1e6;
    let sys = |r: &Run| r.report.sys_ns as f64 / 1e6;
    let mimalloc_wall_ms = pick("mimalloc", wall);
    let memcg_wall_ms = pick("memcg", wall);
    let mimalloc_rss_mib = pick("mimalloc", rss);
    let memcg_rss_mib = pick("memcg", rss);
    let mimalloc_user_ms = pick("mimalloc", user);
    let memcg_user_ms = pick("memcg", user);
    let mimalloc_sys_ms = pick("mimalloc", sys);
    let memcg_sys_ms = pick("memcg", sys);
    let memcg = runs.iter().rev().find_map(|r| r.report.memcg.clone());
    let accuracy = accuracy_run
        .as_ref()
        .and_then(|r| r.report.memcg.as_ref())
        .and_then(|m| m.accuracy.clone());
    let pass = runs
        .iter()
        .chain(accuracy_run.as_ref())
        .all(|r| r.report.pass());
    let mut runs = runs;
    runs.extend(accuracy_run);
    // The timed runs alternate, mimalloc first, in each repetition.
    let paired = |f: fn(&Run) -> f64| -> Spread {
        let v: Vec<f64> = runs
            .chunks_exact(2)
            .filter(|p| p[0].report.allocator == "mimalloc" && p[1].report.allocator == "memcg")
            .map(|p| f(&p[1]) / f(&p[0]))
            .collect();
        Spread::of(&v)
    };
    WorkloadResult {
        workload: w.name().to_string(),
        wall_ratio: memcg_wall_ms.median / mimalloc_wall_ms.median,
        paired_wall_ratio: paired(wall),
        rss_ratio: memcg_rss_mib.median / mimalloc_rss_mib.median,
        mimalloc_user_ms,
        memcg_user_ms,
        paired_user_ratio: paired(user),
        mimalloc_sys_ms,
        memcg_sys_ms,
        mimalloc_wall_ms,
        memcg_wall_ms,
        mimalloc_rss_mib,
        memcg_rss_mib,
        memcg,
        accuracy,
        pass,
        runs,
    }
}

/// The results as a text table.
pub fn table(results: &[WorkloadResult]) -> String {
    use fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<7} {:>24} {:>24} {:>6} {:>17} {:>8} {:>8} {:>6}",
        "",
        "wall ms mimalloc",
        "wall ms memcg",
        "ratio",
        "paired ratio",
        "RSS MiB",
        "RSS MiB",
        "ratio"
    );
    let _ = writeln!(
        s,
        "{:<7} {:>24} {:>24} {:>6} {:>17} {:>8} {:>8} {:>6}",
        "", "min/median/max", "min/median/max", "", "min/median/max", "mimalloc", "memcg", ""
    );
    let ratios = |x: &Spread| format!("{:.3}/{:.3}/{:.3}", x.min, x.median, x.max);
    let spread = |x: &Spread| format!("{:.0}/{:.0}/{:.0}", x.min, x.median, x.max);
    for r in results {
        let _ = writeln!(
            s,
            "{:<7} {:>24} {:>24} {:>6.3} {:>17} {:>8.1} {:>8.1} {:>6.3}",
            r.workload,
            spread(&r.mimalloc_wall_ms),
            spread(&r.memcg_wall_ms),
            r.wall_ratio,
            ratios(&r.paired_wall_ratio),
            r.mimalloc_rss_mib.median,
            r.memcg_rss_mib.median,
            r.rss_ratio,
        );
    }
    let _ = writeln!(
        s,
        "\nCPU time over the same span (getrusage, every thread): user, then system (the kernel \
         zeroing fresh pages)\n{:<7} {:>24} {:>24} {:>17} {:>24} {:>24}",
        "", "user ms mimalloc", "user ms memcg", "paired ratio", "sys ms mimalloc", "sys ms memcg"
    );
    let _ = writeln!(
        s,
        "{:<7} {m:>24} {m:>24} {m:>17} {m:>24} {m:>24}",
        "",
        m = "min/median/max"
    );
    for r in results {
        let _ = writeln!(
            s,
            "{:<7} {:>24} {:>24} {:>17} {:>24} {:>24}",
            r.workload,
            spread(&r.mimalloc_user_ms),
            spread(&r.memcg_user_ms),
            ratios(&r.paired_user_ratio),
            spread(&r.mimalloc_sys_ms),
            spread(&r.memcg_sys_ms),
        );
    }
    let _ = writeln!(
        s,
        "\n{:<7} {:>12} {:>12} {:>12} {:>12} {:>12} {:>8} {:>8}",
        "", "slow entries", "worst gap", "one sample", "bound", "gap/bound", "samples", "checks"
    );
    for r in results {
        let m = r.memcg.as_ref();
        let charges = m.map_or(0, |m| m.charges);
        let kib = |b: u64| format!("{:.1} KiB", b as f64 / 1024.0);
        let (gap, instant, bound, frac, samples) = match &r.accuracy {
            Some(a) => (
                kib(a.worst_held_over_bytes),
                kib(a.worst_over_bytes),
                kib(a.bound_bytes),
                format!("{:.3}", a.worst_fraction_of_bound),
                a.samples.to_string(),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            "{:<7} {:>12} {:>12} {:>12} {:>12} {:>12} {:>8} {:>8}",
            r.workload,
            charges,
            gap,
            instant,
            bound,
            frac,
            samples,
            if r.pass { "pass" } else { "FAIL" },
        );
    }
    s
}

/// The runner's `main`: measures, prints, returns the exit code
/// ([`exit::CHECK_FAILED`] when a memcg check failed, [`exit::USAGE`] on
/// errors).
pub fn main() -> i32 {
    let args = RunnerArgs::parse();
    let results = match measure(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("workloads: {e}");
            return exit::USAGE;
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&results) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("workloads: cannot serialize the results: {e}");
                return exit::USAGE;
            }
        }
    } else {
        println!(
            "memcg = {} (against bare mimalloc; --memcg trailer|heaps)",
            args.memcg.allocator()
        );
        print!("{}", table(&results));
    }
    if results.iter().all(|r| r.pass) {
        exit::OK
    } else {
        eprintln!(
            "workloads: a memcg correctness check failed; see the FAIL rows and the messages above"
        );
        exit::CHECK_FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_counts() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!(s.median, 2.5);
        assert_eq!(Spread::of(&[]).median, 0.0);
    }

    fn run(allocator: &str, wall_ms: u64, user_ms: u64, sys_ms: u64) -> Run {
        Run {
            report: ChildReport {
                workload: "maps".to_string(),
                allocator: allocator.to_string(),
                scale: 1.0,
                wall_ns: wall_ms * 1_000_000,
                user_ns: user_ms * 1_000_000,
                sys_ns: sys_ms * 1_000_000,
                memcg: None,
            },
            maxrss_kib: 1024,
        }
    }

    #[test]
    fn summarize_pairs_each_repetition_for_wall_and_user_time() {
        let runs = vec![
            run("mimalloc", 100, 80, 20),
            run("memcg", 110, 88, 22),
            run("mimalloc", 200, 80, 120),
            run("memcg", 120, 100, 20),
            run("mimalloc", 100, 80, 20),
            run("memcg", 105, 84, 21),
        ];
        // The accuracy run (sampling) comes last and is not timed.
        let r = summarize(Workload::Maps, runs, Some(run("memcg", 900, 900, 900)));
        assert_eq!(r.paired_wall_ratio.min, 0.6);
        assert_eq!(r.paired_wall_ratio.max, 1.1);
        assert_eq!(r.paired_wall_ratio.median, 1.05);
        assert_eq!(r.paired_user_ratio.min, 1.05);
        assert_eq!(r.paired_user_ratio.median, 1.1);
        assert_eq!(r.paired_user_ratio.max, 1.25);
        assert_eq!(
            (r.mimalloc_sys_ms.median, r.memcg_sys_ms.median),
            (20.0, 21.0)
        );
        assert_eq!(
            r.memcg_user_ms.max, 100.0,
            "the accuracy run is in no spread either"
        );
        assert!(table(&[r]).contains("user ms memcg"));
    }
}
