//! The `memcg-sim` binary end to end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memcg-sim"))
        .args(args)
        .env_remove("CARGO_TARGET_DIR")
        .current_dir(scratch(""))
        .output()
        .expect("memcg-sim runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A per-test scratch directory under the target directory.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("memcg-sim-cli")
        .join(name);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn write(name: &str, text: &str) -> String {
    let path = scratch("files").join(name);
    std::fs::write(&path, text).expect("write scenario");
    path.display().to_string()
}

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn compare_json(extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["compare", "--json", "--no-svg", "--steps", "30000"];
    args.extend_from_slice(extra);
    let o = sim(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("compare --json prints JSON")
}

#[test]
fn compare_same_seed_gives_identical_output() {
    let args = ["compare", "--steps", "20000", "--no-svg", "--seed", "9"];
    let (a, b) = (sim(&args), sim(&args));
    assert_eq!(a.status.code(), Some(0), "{}", stderr(&a));
    assert_eq!(a.stdout, b.stdout);
    let c = sim(&["compare", "--steps", "20000", "--no-svg", "--seed", "10"]);
    assert_ne!(a.stdout, c.stdout, "different seeds must differ");
}

#[test]
fn run_same_seed_gives_identical_json_and_other_seeds_differ() {
    let f = scenario_dir().join("attach-churn.toml");
    let f = f.to_str().expect("utf-8 path");
    let a = sim(&["run", f, "--json", "--steps", "3000"]);
    let b = sim(&["run", f, "--json", "--steps", "3000"]);
    assert_eq!(a.status.code(), Some(0), "{}", stderr(&a));
    assert_eq!(a.stdout, b.stdout);
    let c = sim(&["run", f, "--json", "--steps", "3000", "--seed", "99"]);
    assert_ne!(a.stdout, c.stdout);
}

#[test]
fn run_every_scenario_passes_its_checks() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(scenario_dir()).expect("scenarios/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            names.push(path);
        }
    }
    names.sort();
    assert!(
        names.len() >= 7,
        "one scenario per workload kind: {names:?}"
    );
    for path in names {
        let o = sim(&["run", path.to_str().expect("utf-8 path")]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            stderr(&o)
        );
        let out = stdout(&o);
        assert!(out.contains("checks: ok"), "{out}");
        assert!(out.contains("-- memory.numa_stat"), "{out}");
    }
}

#[test]
fn run_malformed_scenarios_report_file_line_column() {
    let cases: [(&str, &str, &str); 12] = [
        ("syntax", "[machine\ntopology = \"2x4\"\n", ":1:9: "),
        ("type", "[machine]\ntopology = \"2x4\"\n\n[run]\nsteps = \"many\"\n", ":5:9: invalid type: string \"many\", expected u64"),
        ("unknown-key", "[machine]\ntopology = \"2x4\"\ncolour = \"blue\"\n", ":3:1: unknown field `colour`"),
        ("unknown-group", "[machine]\ntopology = \"2x4\"\n\n[[task]]\nname = \"t\"\ngroup = \"nope\"\n", ":6:9: unknown group \"nope\""),
        ("negative-rate", "[machine]\ntopology = \"2x4\"\n[[group]]\npath = \"g\"\n[[task]]\nname = \"t\"\ngroup = \"g\"\nmigrate_rate = -0.5\n", ":8:16: `migrate_rate` must be a probability between 0 and 1"),
        ("negative-count", "[machine]\ntopology = \"2x4\"\n[[group]]\npath = \"g\"\n[[task]]\nname = \"t\"\ngroup = \"g\"\ncount = -1\n", ":8:9: invalid value: integer `-1`, expected u64"),
        ("bad-cpu", "[machine]\ntopology = \"2x4\"\n[[group]]\npath = \"g\"\n[[task]]\nname = \"t\"\ngroup = \"g\"\ncpu = 8\n", ":8:7: `cpu` 8 is not a CPU of the machine"),
        ("bad-topology", "[machine]\ntopology = \"two\"\n", ":2:12: `topology` must be like \"2x4\""),
        ("bad-start-cpu", "[machine]\ntopology = \"2x4\"\n[[group]]\npath = \"g\"\n[[task]]\nname = \"t\"\ngroup = \"g\"\nstart_cpu = 9\n", ":8:13: `start_cpu` 9 is not a CPU of the machine"),
        ("bad-stock-slots", "[machine]\ntopology = \"2x4\"\nobj_stock_slots = 0\n", ":3:19: `obj_stock_slots` must be from 1 to 5"),
        ("bad-oom-policy", "[machine]\ntopology = \"2x4\"\n[[group]]\npath = \"g\"\noom_policy = \"explode\"\n", ":5:14: `oom_policy` must be \"kill\", \"fail\" or \"force\", got \"explode\""),
        ("bad-fallible-share", "[machine]\ntopology = \"2x4\"\n[[group]]\npath = \"g\"\n[[task]]\nname = \"t\"\ngroup = \"g\"\nfallible_share = 2.0\n", ":8:18: `fallible_share` must be a probability between 0 and 1"),
    ];
    for (name, text, expected) in cases {
        let file = write(&format!("{name}.toml"), text);
        let o = sim(&["run", &file]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.starts_with(&format!("memcg-sim: {file}{expected}")),
            "{name}: expected `{file}{expected}`, got {err}"
        );
        assert!(stdout(&o).is_empty(), "{name}: nothing runs");
    }
}

const BIG_OBJECTS: &str = r#"
[machine]
topology = "1x2"
[run]
steps = 400
[[group]]
path = "g"
[[task]]
name = "t"
group = "g"
alloc_min_bytes = 4194304
alloc_max_bytes = 4194304
lifetime_ops = 1000
"#;

const LIMITED: &str = r#"
[machine]
topology = "1x1"
[run]
steps = 1000
on_oom = "count"
[[group]]
path = "g"
max_bytes = "1M"
[[task]]
name = "t"
group = "g"
alloc_min_bytes = 65536
alloc_max_bytes = 131072
lifetime_ops = 1000
"#;

fn assert_caught(o: &Output, check: &str, step: &str) {
    assert_eq!(o.status.code(), Some(1), "{}", stderr(o));
    let err = stderr(o);
    assert!(err.contains("violation: seed 1"), "{err}");
    assert!(err.contains(step), "{err}");
    assert!(err.contains(&format!("check `{check}` failed")), "{err}");
}

#[test]
fn run_lost_charge_is_caught_by_usage_floor() {
    let f = write("big.toml", BIG_OBJECTS);
    assert_eq!(sim(&["run", &f]).status.code(), Some(0));
    let o = sim(&["run", &f, "--inject", "lose-charge@50"]);
    assert_caught(
        &o,
        "usage-floor",
        "step 50, operation `fault kind=LoseCharge`",
    );
}

#[test]
fn run_forced_charges_past_max_are_caught_by_limit() {
    let f = write("limited.toml", LIMITED);
    let clean = sim(&["run", &f]);
    assert_eq!(clean.status.code(), Some(0), "{}", stderr(&clean));
    assert!(
        stdout(&clean).contains("refused"),
        "the limit is under pressure"
    );
    let o = sim(&["run", &f, "--inject", "force-over-max@10:g"]);
    assert_caught(&o, "limit", "step ");
}

#[test]
fn run_leaked_charge_is_caught_at_the_end() {
    let f = scenario_dir().join("ping-pong.toml");
    let o = sim(&[
        "run",
        f.to_str().expect("utf-8"),
        "--steps",
        "500",
        "--inject",
        "leak-charge@100",
    ]);
    assert_caught(&o, "end-usage", "at the end of the run");
}

#[test]
fn run_oom_fails_unless_counted() {
    let f = write(
        "oom.toml",
        &LIMITED.replace("on_oom = \"count\"", "on_oom = \"fail\""),
    );
    let o = sim(&["run", &f]);
    assert_caught(&o, "oom", "operation `alloc");
}

/// The three OOM policies side by side (`scenarios/oom-kill.toml`): the
/// tenant under `kill` is killed, restarted and killed again, and is the
/// only group reported killed; the one under `fail` overcommits as much
/// and is refused, never killed; the well-behaved one counts no event.
#[test]
fn run_oom_kill_scenario_kills_only_the_tenant_under_kill() {
    let f = scenario_dir().join("oom-kill.toml");
    let f = f.to_str().expect("utf-8 path");
    let o = sim(&["run", f, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(o.stdout, sim(&["run", f, "--json"]).stdout, "deterministic");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["checks"]["ok"], true);
    let killed = v["killed"].as_array().expect("a list of killed groups");
    assert_eq!(killed.len(), 1, "{killed:?}");
    assert_eq!(killed[0]["path"], "tenants/greedy");
    let kills = killed[0]["kills"].as_u64().expect("number");
    assert!(kills >= 2, "killed again after each restart: {kills}");
    assert_eq!(v["metrics"]["kills"].as_u64(), Some(kills));
    let group = |path: &str| -> serde_json::Value {
        let groups = v["groups"].as_array().expect("groups");
        let g = groups.iter().find(|g| g["path"] == path);
        g.cloned().unwrap_or_else(|| panic!("no group {path}"))
    };
    let event = |path: &str, key: &str| -> u64 {
        group(path)["events_local"][key].as_u64().expect("number")
    };
    // Each kill counts one `oom` and one `oom_kill`, there and above.
    assert_eq!(event("tenants/greedy", "oom_kill"), kills);
    assert_eq!(event("tenants/greedy", "oom"), kills);
    assert_eq!(group("tenants")["events"]["oom_kill"].as_u64(), Some(kills));
    // Every refusal of the run is `careful`'s, which is never killed.
    let refused = v["metrics"]["ooms"].as_u64().expect("number");
    assert!(refused > 0);
    assert_eq!(event("tenants/careful", "oom"), refused);
    assert_eq!(event("tenants/careful", "oom_kill"), 0);
    for key in ["max", "oom", "oom_kill"] {
        assert_eq!(event("tenants/steady", key), 0, "steady {key}");
    }
    // The kills are OOM outcomes: with `on_oom = "fail"` the first one
    // stops the run.
    let text = std::fs::read_to_string(f).expect("scenario");
    let strict = write(
        "oom-kill-strict.toml",
        &text.replace("on_oom = \"count\"", "on_oom = \"fail\""),
    );
    let o = sim(&["run", &strict]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("operation `alloc task=0 "), "{err}");
    assert!(err.contains("check `oom` failed"), "{err}");
    assert!(err.contains("group `tenants/greedy` was killed"), "{err}");
}

#[test]
fn run_oom_kill_scenario_text_lists_killed_groups() {
    let f = scenario_dir().join("oom-kill.toml");
    let o = sim(&["run", f.to_str().expect("utf-8 path")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| l.starts_with("oom kills "))
        .unwrap_or_else(|| panic!("no kill line: {out}"));
    assert!(
        line.contains("killed groups: \"tenants/greedy\" ("),
        "{line}"
    );
    assert!(
        !line.contains("careful") && !line.contains("steady"),
        "{line}"
    );
}

#[test]
fn fuzz_clean_seeds_pass() {
    let o = sim(&["fuzz", "--seeds", "6", "--steps", "2000"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("no violation"));
}

#[test]
fn fuzz_violation_writes_minimal_reproducer() {
    let out = scratch("fuzz-out");
    let o = sim(&[
        "fuzz",
        "--seeds",
        "3",
        "--steps",
        "3000",
        "--inject",
        "leak-charge@1500",
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let text = stdout(&o);
    let line = text
        .lines()
        .find(|l| l.starts_with("minimal reproducer"))
        .unwrap_or_else(|| panic!("no reproducer line: {text}"));
    let path = line.rsplit(": ").next().expect("path");
    let repro = std::fs::read_to_string(path).expect("reproducer written");
    let steps = repro.matches("[[step]]").count();
    assert!(
        (1..=3).contains(&steps),
        "shrunk to {steps} steps:\n{repro}"
    );
    assert!(repro.contains("kind = \"leak-charge\""), "{repro}");
    let again = sim(&["run", path]);
    assert_eq!(again.status.code(), Some(1), "the reproducer reproduces");
    assert!(
        stderr(&again).contains("check `end-usage` failed"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn compare_per_node_charges_local_node_and_single_does_not() {
    let v = compare_json(&[]);
    let per_node = v["per_node"]["wrong_node_percent"]
        .as_f64()
        .expect("number");
    let single = v["single"]["wrong_node_percent"].as_f64().expect("number");
    assert!(per_node < 0.5, "per-node wrong-node share {per_node}%");
    assert!(single > 10.0, "single wrong-node share {single}%");
    assert_eq!(v["checks_ok"], true);
}

/// With the switch pairs of the default workload, the per-node cache needs
/// fewer byte-stock replacements and fewer shared atomics.
#[test]
fn compare_per_node_needs_fewer_stock_replacements_than_single() {
    let v = compare_json(&[]);
    let get = |mode: &str, key: &str| v[mode][key].as_f64().expect("number");
    let (p, s) = (
        get("per_node", "obj_stock_replacements_per_1k"),
        get("single", "obj_stock_replacements_per_1k"),
    );
    assert!(
        p < s,
        "replacements per 1,000 charges: per-node {p}, single {s}"
    );
    let (p, s) = (
        get("per_node", "shared_atomics_per_1k"),
        get("single", "shared_atomics_per_1k"),
    );
    assert!(
        p < s,
        "shared atomics per 1,000 charges: per-node {p}, single {s}"
    );
}

/// The regression's pattern: ping-pong pairs of one group that started on
/// two nodes and now switch on one CPU. With the single cache each pair
/// brings two objcgs to that CPU's byte stock (six for three groups, one
/// more than its slots); with the per-node cache, one.
#[test]
fn switch_ping_pong_per_node_needs_fewer_stock_replacements_than_single() {
    let counters = |file: &str| -> serde_json::Value {
        let path = scenario_dir().join(file);
        let o = sim(&["run", path.to_str().expect("utf-8 path"), "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
        assert_eq!(v["checks"]["ok"], true);
        v["counters"].clone()
    };
    let per_node = counters("switch-ping-pong.toml");
    let single = counters("switch-ping-pong-single.toml");
    let replacements =
        |c: &serde_json::Value| c["obj_stock_replacements"].as_u64().expect("number");
    assert!(
        replacements(&per_node) < replacements(&single),
        "per-node {per_node} vs single {single}"
    );
    assert_eq!(replacements(&per_node), 0);
    assert!(per_node["shared_atomics"].as_u64() < single["shared_atomics"].as_u64());
}

#[test]
fn compare_writes_svg_where_asked() {
    let path = scratch("svg").join("chart.svg");
    let p = path.to_str().expect("utf-8");
    let o = sim(&["compare", "--steps", "5000", "--svg", p]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("chart: {p}")));
    let svg = std::fs::read_to_string(&path).expect("svg written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("bytes charged to another node"));
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    assert_eq!(sim(&["compare", "--tasks", "1"]).status.code(), Some(2));
    assert_eq!(sim(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(sim(&["run", "/nonexistent.toml"]).status.code(), Some(2));
    let help = sim(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    for cmd in ["compare", "run", "fuzz"] {
        assert!(stdout(&help).contains(cmd), "{}", stdout(&help));
    }
}
