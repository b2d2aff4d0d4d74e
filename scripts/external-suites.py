#!/usr/bin/env python3
"""Runs the test suites of widely used crates with memcg's allocators.

For each crate: its published source is fetched from the registry (through
`cargo fetch`, so only crates.io is needed), a small shim crate that sets
the global allocator is added as a dev-dependency and linked into the
crate's library tests and every integration test (`extern crate ... as _;`
appended to each test crate root: a global allocator in any linked crate is
the whole binary's), and `cargo test --lib --tests` runs once per
configuration:

- `system`: the shim with no allocator of its own (the baseline);
- `alloc`:  `MemcgAlloc<System>`;
- `heaps`:  `MemcgMimalloc` (feature `mimalloc`);

and each memcg allocator under each runtime mode: the default (the
machine's topology, the per-node task cache, the CPU-id source the runtime
picks), then `MEMCG_TOPOLOGY=2x1 MEMCG_TASK_CACHE=single` with each
`MEMCG_CPU_MODE` (`rseq`, `rdpid`, `getcpu`; a mode the CPU or kernel does
not offer falls back to `getcpu`, as the runtime documents). Every test binary is checked to contain the allocator's symbols
(a shim that was not linked would test nothing).

A configuration passes when its passed, failed and ignored counts equal the
baseline's; one that differs runs once more (some suites assert timings that
a loaded machine breaks), and both results are reported. The script prints one line per run and a table, and exits 1 if
any run differs from the baseline (or a build fails).

Usage:
  scripts/external-suites.py                 # every crate, every mode
  scripts/external-suites.py --quick bytes   # default mode and one 2x1 mode
  scripts/external-suites.py --list

Work files go to target/external-suites/ (sources, one target directory per
allocator, logs). Needs: the Rust toolchain, python3, `nm` (binutils), and
access to crates.io.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "target" / "external-suites"

# name -> (version, extra cargo test arguments). Versions are pinned so that
# a run can be repeated; bump them deliberately.
CRATES = {
    "hashbrown": ("0.17.2", []),
    "serde_json": ("1.0.154", []),
    "crossbeam-channel": ("0.5.15", []),
    "rayon-core": ("1.13.0", []),
    "tokio": ("1.54.1", ["--features", "full,test-util"]),
    "bytes": ("1.12.2", []),
    "parking_lot": ("0.12.5", []),
}

ALLOCATORS = ["system", "alloc", "heaps"]
# Symbols that show the allocator is linked into a test binary.
SYMBOL = {"alloc": "MemcgAlloc", "heaps": "MemcgMimalloc"}

MODES_FULL = [
    ("default", {}),
    ("2x1-single-rseq", {"MEMCG_TOPOLOGY": "2x1", "MEMCG_TASK_CACHE": "single", "MEMCG_CPU_MODE": "rseq"}),
    ("2x1-single-rdpid", {"MEMCG_TOPOLOGY": "2x1", "MEMCG_TASK_CACHE": "single", "MEMCG_CPU_MODE": "rdpid"}),
    ("2x1-single-getcpu", {"MEMCG_TOPOLOGY": "2x1", "MEMCG_TASK_CACHE": "single", "MEMCG_CPU_MODE": "getcpu"}),
]
MODES_QUICK = [MODES_FULL[0], MODES_FULL[3]]

SHIM_TOML = """[package]
name = "memcg-suite-shim"
version = "0.0.0"
edition = "2021"
publish = false

[workspace]

[features]
alloc = ["dep:memcg"]
heaps = ["dep:memcg", "memcg/mimalloc"]

[dependencies]
memcg = {{ path = "{memcg}", optional = true }}
"""

SHIM_LIB = """//! Sets the global allocator of whatever links it (see
//! scripts/external-suites.py); with no feature, the system allocator.

#[cfg(all(feature = "alloc", not(feature = "heaps")))]
#[global_allocator]
static MEMCG_SUITE_ALLOC: memcg::MemcgAlloc = memcg::MemcgAlloc::new(std::alloc::System);

#[cfg(feature = "heaps")]
#[global_allocator]
static MEMCG_SUITE_ALLOC: memcg::MemcgMimalloc = memcg::MemcgMimalloc::new();

"""

MARK = "// memcg external suites: the allocator shim"


def sh(cmd, cwd=None, env=None, log=None, check=True):
    """Runs `cmd`; its output goes to `log` (a path) or is returned."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    if log:
        with open(log, "w") as f:
            r = subprocess.run(cmd, cwd=cwd, env=full_env, stdout=f, stderr=subprocess.STDOUT)
    else:
        r = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)
    if check and r.returncode != 0:
        where = f" (log: {log})" if log else f":\n{r.stdout}{r.stderr}"
        raise RuntimeError(f"{' '.join(cmd)} failed with status {r.returncode}{where}")
    return r


def fetch_source(name, version):
    """Copies the crate's published source into WORK/src/NAME-VERSION."""
    dest = WORK / "src" / f"{name}-{version}"
    if (dest / "Cargo.toml").exists():
        return dest
    fetcher = WORK / "fetch" / f"{name}-{version}"
    (fetcher / "src").mkdir(parents=True, exist_ok=True)
    (fetcher / "Cargo.toml").write_text(
        f'[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n\n[workspace]\n\n'
        f'[dependencies]\n{name} = "={version}"\n'
    )
    (fetcher / "src" / "lib.rs").write_text("")
    sh(["cargo", "fetch", "-q"], cwd=fetcher)
    meta = json.loads(sh(["cargo", "metadata", "--format-version", "1"], cwd=fetcher).stdout)
    pkg = next(p for p in meta["packages"] if p["name"] == name and p["version"] == version)
    src = Path(pkg["manifest_path"]).parent
    shutil.copytree(src, dest)
    os.chmod(dest, 0o755)
    for p in dest.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return dest


def write_shim():
    shim = WORK / "shim"
    (shim / "src").mkdir(parents=True, exist_ok=True)
    (shim / "Cargo.toml").write_text(SHIM_TOML.format(memcg=ROOT / "crates" / "memcg"))
    (shim / "src" / "lib.rs").write_text(SHIM_LIB)
    return shim


def inject(crate_dir, shim):
    """Adds the shim as a dev-dependency and links it into every test
    crate root. Idempotent."""
    toml = crate_dir / "Cargo.toml"
    text = toml.read_text()
    if "memcg-suite-shim" not in text:
        text += f'\n[dev-dependencies.memcg-suite-shim]\npath = "{shim}"\n'
        if crate_dir.name.startswith("tokio-"):
            # Its dev-dependencies (tokio-test, tokio-stream, ...) depend on
            # tokio from the registry: one tokio for all, as its own
            # workspace does with the same patch.
            text += '\n[patch.crates-io]\ntokio = { path = "." }\n'
        # A published lock file knows neither the shim nor the patch.
        (crate_dir / "Cargo.lock").unlink(missing_ok=True)
        if not re.search(r"^\[workspace\]", text, re.M):
            text += "\n[workspace]\n"
        toml.write_text(text)
    roots = []
    lib = crate_dir / "src" / "lib.rs"
    if lib.exists():
        roots.append((lib, "#[cfg(test)]\nextern crate memcg_suite_shim as _;\n"))
    tests = crate_dir / "tests"
    if tests.is_dir():
        for p in sorted(tests.glob("*.rs")):
            roots.append((p, "extern crate memcg_suite_shim as _;\n"))
        for p in sorted(tests.glob("*/main.rs")):
            roots.append((p, "extern crate memcg_suite_shim as _;\n"))
    own = set()
    for path, line in roots:
        body = path.read_text()
        if MARK in body:
            continue
        if "#[global_allocator]" in body:
            # A test of the crate with an allocator of its own: left as is
            # (it runs in every configuration, with its own allocator).
            own.add(path.parent.name if path.name == "main.rs" else path.stem)
            continue
        path.write_text(body.rstrip("\n") + f"\n\n{MARK}\n{line}")
    (crate_dir / ".memcg-own-allocator").write_text("\n".join(sorted(own)))


RESULT = re.compile(r"test result: (\w+)\. (\d+) passed; (\d+) failed; (\d+) ignored")


def counts(log):
    passed = failed = ignored = 0
    for m in RESULT.finditer(Path(log).read_text(errors="replace")):
        passed += int(m.group(2))
        failed += int(m.group(3))
        ignored += int(m.group(4))
    return passed, failed, ignored


def test_binaries(crate_dir, target, args, features):
    """Builds the tests; returns the executables."""
    r = sh(
        ["cargo", "test", "--lib", "--tests", "--no-run", "--message-format=json", *args, *features],
        cwd=crate_dir,
        env={"CARGO_TARGET_DIR": str(target)},
    )
    exes = []
    for line in r.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["profile"]["test"]:
            exes.append((msg["target"]["name"], msg["executable"]))
    return exes


def linked(exe, allocator):
    """Whether `exe` has the allocator, or has no test to run (a test file
    whose whole crate is behind a feature that is off)."""
    if allocator == "system":
        return True
    if SYMBOL[allocator] in sh(["nm", "-C", exe], check=False).stdout:
        return True
    listed = sh([exe, "--list"], check=False).stdout
    return re.search(r"^0 tests", listed, re.M) is not None


def run_crate(name, modes, results):
    version, args = CRATES[name]
    crate_dir = fetch_source(name, version)
    shim = write_shim()
    inject(crate_dir, shim)
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    baseline = None
    for allocator in ALLOCATORS:
        features = [] if allocator == "system" else ["--features", f"memcg-suite-shim/{allocator}"]
        target = WORK / f"target-{allocator}"
        t0 = time.time()
        try:
            exes = test_binaries(crate_dir, target, args, features)
        except RuntimeError as e:
            print(f"{name} {allocator}: BUILD FAILED: {e}", flush=True)
            results.append((name, allocator, "-", None, "build failed"))
            continue
        own = set((crate_dir / ".memcg-own-allocator").read_text().split())
        missing = [e for t, e in exes if t not in own and not linked(e, allocator)]
        if missing:
            print(f"{name} {allocator}: the shim is not linked into {missing}", flush=True)
            results.append((name, allocator, "-", None, "not linked"))
            continue
        build_secs = time.time() - t0
        for mode, env in ([("default", {})] if allocator == "system" else modes):
            log = logs / f"{name}-{allocator}-{mode}.log"
            t0 = time.time()

            def run(log):
                r = sh(
                    ["cargo", "test", "--lib", "--tests", "--no-fail-fast", *args, *features],
                    cwd=crate_dir,
                    env={"CARGO_TARGET_DIR": str(target), **env},
                    log=log,
                    check=False,
                )
                return r, counts(log)

            r, c = run(log)
            first = None
            if allocator != "system" and baseline is not None and c != baseline:
                # Some suites assert timings (crossbeam-channel's
                # `recv_timeout`: at most 250 ms), which a loaded machine
                # breaks: one rerun, and both results are reported.
                first = c
                r, c = run(logs / f"{name}-{allocator}-{mode}.rerun.log")
            if allocator == "system":
                baseline = c
                verdict = "baseline" if r.returncode == 0 else f"baseline (status {r.returncode})"
            elif baseline is None:
                verdict = "no baseline"
            elif c == baseline and first is not None:
                verdict = f"same as system on a rerun (first run {first}, see its log)"
            elif c == baseline:
                verdict = "same as system"
            else:
                verdict = f"DIFFERS from system {baseline}"
            results.append((name, allocator, mode, c, verdict))
            print(
                f"{name} {allocator} {mode}: passed {c[0]}, failed {c[1]}, ignored {c[2]}, "
                f"{len(exes)} test binaries, {time.time() - t0:.0f} s (build {build_secs:.0f} s): {verdict}",
                flush=True,
            )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("crates", nargs="*", help="crates to run (default: all)")
    ap.add_argument("--quick", action="store_true", help="the default mode and 2x1-single-getcpu only")
    ap.add_argument("--list", action="store_true", help="list the crates and versions")
    a = ap.parse_args()
    if a.list:
        for n, (v, args) in CRATES.items():
            print(n, v, " ".join(args))
        return 0
    names = a.crates or list(CRATES)
    unknown = [n for n in names if n not in CRATES]
    if unknown:
        print(f"unknown crate(s) {unknown}; known: {', '.join(CRATES)}", file=sys.stderr)
        return 2
    modes = MODES_QUICK if a.quick else MODES_FULL
    results = []
    for n in names:
        try:
            run_crate(n, modes, results)
        except RuntimeError as e:
            print(f"{n}: {e}", flush=True)
            results.append((n, "-", "-", None, "fetch failed"))
    print("\n| crate | allocator | mode | passed | failed | ignored | result |")
    print("|---|---|---|---|---|---|---|")
    bad = 0
    for n, alloc, mode, c, verdict in results:
        p, f, i = c if c else ("-", "-", "-")
        print(f"| {n} | {alloc} | {mode} | {p} | {f} | {i} | {verdict} |")
        # A baseline with failures (tokio's `fs_try_exists` fails as root)
        # is still the baseline: the memcg runs must fail the same way.
        if not (verdict.startswith("baseline") or verdict.startswith("same as system")):
            bad += 1
    print(f"\n{bad} run(s) differ from the system allocator or failed to build" if bad else "\nevery run matches the system allocator")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
