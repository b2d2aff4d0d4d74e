#!/usr/bin/env python3
"""Mutation check of memcg's loom models: do they have teeth?

Finds every non-Relaxed memory ordering (``Ordering::Release``, ``Acquire``,
``AcqRel``, ``SeqCst``) and every ``fence(..)`` in ``crates/memcg/src/engine/``
and ``crates/memcg/src/heap_table.rs``, weakens each one at a time, runs the
loom models against it, and prints a table: location, mutation, and the first
model that fails with it ("killed by"), or SURVIVED (every model that reaches
the site passes) or "not reached" (no model executes the site).

Mutations per site:
  Release -> Relaxed; Acquire -> Relaxed; AcqRel -> Acquire and -> Release;
  SeqCst -> the AcqRel class of the access (load: Acquire, store: Release,
  read-modify-write: AcqRel, CAS failure: Acquire) and -> Relaxed;
  fence(SeqCst) -> removed and -> fence(AcqRel).
(loom treats SeqCst accesses much like AcqRel and does not model load
buffering, so SeqCst -> AcqRel mutants are expected to survive; the
SeqCst -> Relaxed ones tell whether the acquire/release part is exercised.)

How (one build for all mutants): the script rewrites every site into a call
of ``crate::tests::mutation::ordering(<mutant no>, <original>, &[<weaker>..])``
(``crates/memcg/src/tests/mutation.rs``), builds the loom test binary once
with ``--cfg memcg_loom``, and restores the sources at once (also on error,
Ctrl-C or SIGTERM; the originals are also saved in a temporary directory whose
path is printed). Each run then selects its mutant with
``MEMCG_LOOM_MUTANT=<n>``; loom takes orderings as run-time arguments, so the
weakened ordering is exactly what loom explores. A first pass runs every model
un-mutated with ``MEMCG_LOOM_COVERAGE`` to learn which sites each model
reaches (and fails if a model fails un-mutated); each mutant then runs only
the models that reach its site, cheapest first, and stops at the first
failure. A site's mutants run weakest first: when SeqCst -> Relaxed (or a
removed fence) survives, the stronger weakening is reported as surviving
without a run (loom explores a subset of the weaker one's behaviours).
With --baseline-models REGEX those models run first, and a second column
gives the result they alone give (a "before" table for new models). A model that runs past its timeout (30x its un-mutated time +
60 s, at most --timeout) does not count as a kill: the mutant is reported
TIMEOUT (a weakened ordering that makes loom spin fails on loom's branch
limit instead, so a timeout usually means a loaded machine).

Usage (from anywhere in the repository):
  scripts/loom-mutations.py                # every site, every loom model
  scripts/loom-mutations.py --sites obj_cgroup --models loom_table
  scripts/loom-mutations.py --list         # the mutants only, no build
  scripts/loom-mutations.py -j 2 --out /tmp/mutations.md
  scripts/loom-mutations.py -j 2 --baseline-models 'loom_(reclaim|task)::'
Options: see --help. Environment: LOOM_MAX_PREEMPTIONS (default 2) as for
ci/loom.sh.

Runtime: one release build of memcg under loom (~1-2 min on 2 cores), the
coverage pass (about one full ci/loom.sh run), then per mutant the covering
models until one fails. Killed mutants cost seconds; a survivor costs every
model that reaches it. With ~170 mutants and the models of
crates/memcg/src/tests, expect roughly 10-20 minutes with -j 2.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "crates" / "memcg" / "src"
HELPER = "crate::tests::mutation"

ORDER_RE = re.compile(r"\bOrdering::(Release|Acquire|AcqRel|SeqCst)\b")
FENCE_RE = re.compile(r"\b(?:crate::sync::)?fence\(\s*Ordering::(\w+)\s*\)")
CALL_RE = re.compile(
    r"\.(load|store|swap|fetch_\w+|compare_exchange(?:_weak)?|fetch_update)\s*\("
)


@dataclass
class Site:
    path: Path
    start: int  # offset of the text replaced
    end: int
    line: int
    original: str  # Release, Acquire, AcqRel, SeqCst
    access: str  # load, store, rmw, cas-success, cas-failure, fence, ?
    weaker: list[str]  # orderings of the mutants ("removed" for a fence)
    first: int = 0  # mutant number of weaker[0]
    covered_by: list[str] = field(default_factory=list)

    @property
    def location(self) -> str:
        return f"{self.path.relative_to(SRC)}:{self.line}"


def source_files() -> list[Path]:
    return sorted((SRC / "engine").glob("*.rs")) + [SRC / "heap_table.rs"]


def test_module_start(text: str) -> int:
    """Offset where a file's non-loom unit tests begin (not compiled under
    loom, so not sites), or the end of the text."""
    m = re.search(r"#\[cfg\(all\(test, not\(memcg_loom\)\)\)\]\s*mod tests", text)
    return m.start() if m else len(text)


def comment_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"//[^\n]*", text)]


def access_of(text: str, pos: int) -> str:
    """The atomic operation whose argument list holds `pos`, and for a CAS
    whether the ordering is its success or failure argument."""
    window_start = max(0, pos - 600)
    best = None
    for m in CALL_RE.finditer(text, window_start, pos):
        depth = text.count("(", m.end() - 1, pos) - text.count(")", m.end() - 1, pos)
        if depth > 0:
            best = m
    if best is None:
        return "?"
    name = best.group(1)
    if name == "load":
        return "load"
    if name == "store":
        return "store"
    if name.startswith("compare_exchange") or name == "fetch_update":
        before = len(ORDER_RE.findall(text, best.end(), pos)) + len(
            re.findall(r"\bOrdering::Relaxed\b", text[best.end() : pos])
        )
        return "cas-success" if before == 0 else "cas-failure"
    return "rmw"


def weakenings(original: str, access: str) -> list[str]:
    if access == "fence":
        return ["removed"] + (["AcqRel"] if original == "SeqCst" else [])
    if original in ("Release", "Acquire"):
        return ["Relaxed"]
    if original == "AcqRel":
        return ["Acquire", "Release"]
    # SeqCst
    cls = {
        "load": "Acquire",
        "store": "Release",
        "cas-failure": "Acquire",
    }.get(access, "AcqRel")
    # The weakest first: if it survives, the stronger one does too.
    return ["Relaxed", cls]


def find_sites() -> list[Site]:
    sites: list[Site] = []
    for path in source_files():
        text = path.read_text()
        if HELPER in text:
            sys.exit(
                f"{path} is still instrumented (an interrupted run?): "
                f"restore it with `git checkout -- {path.relative_to(REPO)}`"
            )
        limit = test_module_start(text)
        comments = comment_spans(text)

        def in_comment(pos: int) -> bool:
            return any(a <= pos < b for a, b in comments)

        fence_spans = []
        for m in FENCE_RE.finditer(text, 0, limit):
            if in_comment(m.start()):
                continue
            fence_spans.append((m.start(), m.end()))
            sites.append(
                Site(path, m.start(), m.end(), text.count("\n", 0, m.start()) + 1,
                     m.group(1), "fence", weakenings(m.group(1), "fence"))
            )
        for m in ORDER_RE.finditer(text, 0, limit):
            if in_comment(m.start()) or any(a <= m.start() < b for a, b in fence_spans):
                continue
            access = access_of(text, m.start())
            sites.append(
                Site(path, m.start(), m.end(), text.count("\n", 0, m.start()) + 1,
                     m.group(1), access, weakenings(m.group(1), access))
            )
    sites.sort(key=lambda s: (str(s.path), s.start))
    n = 1
    for s in sites:
        s.first = n
        n += len(s.weaker)
    return sites


def instrumented(text: str, sites: list[Site]) -> str:
    for s in sorted(sites, key=lambda s: s.start, reverse=True):
        if s.access == "fence":
            weaker = ", ".join(f"Ordering::{w}" for w in s.weaker if w != "removed")
            new = f"{HELPER}::fence({s.first}, Ordering::{s.original}, &[{weaker}])"
        else:
            weaker = ", ".join(f"Ordering::{w}" for w in s.weaker)
            new = f"{HELPER}::ordering({s.first}, Ordering::{s.original}, &[{weaker}])"
        text = text[: s.start] + new + text[s.end :]
    return text


class Restorer:
    """Keeps the original sources (in memory and in a temporary directory)
    and puts them back on exit, error or signal."""

    def __init__(self, paths: list[Path]):
        self.saved = {p: p.read_bytes() for p in paths}
        self.backup = Path(tempfile.mkdtemp(prefix="loom-mutations-"))
        for p in paths:
            dst = self.backup / p.relative_to(REPO)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(self.saved[p])
        self.active = True
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame):
        self.restore()
        stop_children()
        os._exit(128 + signum)

    def restore(self):
        if not self.active:
            return
        for p, data in self.saved.items():
            if p.read_bytes() != data:
                p.write_bytes(data)
        self.active = False
        shutil.rmtree(self.backup, ignore_errors=True)


def build(sites: list[Site], target_dir: str) -> Path:
    by_file: dict[Path, list[Site]] = {}
    for s in sites:
        by_file.setdefault(s.path, []).append(s)
    restorer = Restorer(list(by_file))
    print(f"sources saved in {restorer.backup} until the build is done", file=sys.stderr)
    try:
        for path, file_sites in by_file.items():
            path.write_text(instrumented(path.read_text(), file_sites))
        env = dict(os.environ, RUSTFLAGS="--cfg memcg_loom -C debug-assertions")
        out = subprocess.run(
            ["cargo", "test", "-p", "memcg", "--lib", "--release", "--target-dir",
             target_dir, "--no-run", "--message-format=json"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, check=False, text=True,
        )
        exe = None
        errors = 0
        for line in out.stdout.splitlines():
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if msg.get("reason") == "compiler-artifact" and msg.get("executable") and \
                    msg.get("profile", {}).get("test") and msg["target"]["name"] == "memcg":
                exe = Path(msg["executable"])
            if msg.get("reason") == "compiler-message" and \
                    msg["message"].get("level") == "error":
                errors += 1
                if errors <= 3:
                    print(msg["message"].get("rendered", ""), file=sys.stderr)
        if out.returncode != 0 or exe is None:
            sys.exit("the instrumented build failed")
        return exe
    finally:
        restorer.restore()


CHILDREN: set[subprocess.Popen] = set()


def stop_children():
    for child in list(CHILDREN):
        try:
            child.kill()
        except OSError:
            pass


def on_signal(signum, _frame):
    stop_children()
    os._exit(128 + signum)


@dataclass
class Run:
    ok: bool
    seconds: float
    timed_out: bool
    tail: str


def run_model(exe: Path, test: str, env_extra: dict[str, str], timeout: float) -> Run:
    env = dict(os.environ, **env_extra)
    env.setdefault("LOOM_MAX_PREEMPTIONS", "2")
    start = time.monotonic()
    p = subprocess.Popen(
        [str(exe), "--exact", test, "--test-threads", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    CHILDREN.add(p)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        return Run(False, time.monotonic() - start, True, "")
    finally:
        CHILDREN.discard(p)
    lines = [l for l in out.splitlines() if "panicked" in l or "assert" in l]
    return Run(p.returncode == 0, time.monotonic() - start, False, " | ".join(lines[:2]))


def list_models(exe: Path, pattern: str) -> list[str]:
    out = subprocess.run([str(exe), "--list"], stdout=subprocess.PIPE, text=True, check=True)
    names = [l[: -len(": test")] for l in out.stdout.splitlines() if l.endswith(": test")]
    return [n for n in names if re.search(pattern, n)]


def short(test: str) -> str:
    return test.removeprefix("tests::")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", default="", help="regex on the site's location (file:line)")
    ap.add_argument("--models", default="loom_", help="regex on model names")
    ap.add_argument("--baseline-models", metavar="REGEX",
                    help="run the models matching REGEX first and add a column with "
                         "the result these models alone give (e.g. the models "
                         "before new ones were added)")
    ap.add_argument("--timeout", type=float, default=600,
                    help="most seconds per model run (default 600; also at most "
                         "30x the model's un-mutated time + 60 s)")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="mutants run in parallel")
    ap.add_argument("--target-dir", default="target/loom")
    ap.add_argument("--out", help="also write the table (markdown) here")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args()

    all_sites = find_sites()
    sites = [s for s in all_sites if re.search(args.sites, s.location)]
    n_mutants = sum(len(s.weaker) for s in sites)
    if args.list:
        for s in sites:
            for k, w in enumerate(s.weaker):
                print(f"{s.first + k:4} {s.location:28} {s.access:12} {s.original} -> {w}")
        print(f"{len(sites)} sites, {n_mutants} mutants")
        return 0

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    t0 = time.monotonic()
    # Every site is instrumented (numbers stay stable); only `sites` run.
    built = build(all_sites, args.target_dir)
    # A private copy: a later build into the same target directory (the
    # restored sources) rewrites the binary in place.
    keep = tempfile.TemporaryDirectory(prefix="loom-mutants-")
    exe = Path(keep.name) / built.name
    shutil.copy2(built, exe)
    print(f"built {built.name} in {time.monotonic() - t0:.0f}s; sources restored",
          file=sys.stderr)

    models = list_models(exe, args.models)
    coverage: dict[int, list[str]] = {}
    baseline: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for test in models:
            cov = Path(tmp) / (short(test) + ".cov")
            r = run_model(exe, test, {"MEMCG_LOOM_COVERAGE": str(cov)}, args.timeout)
            if not r.ok:
                print(f"model {test} fails un-mutated ({'timeout' if r.timed_out else r.tail})",
                      file=sys.stderr)
                return 2
            baseline[test] = r.seconds
            print(f"  coverage {short(test)}: {r.seconds:.1f}s", file=sys.stderr)
            if cov.exists():
                for line in cov.read_text().split():
                    coverage.setdefault(int(line), []).append(test)
    def is_base(test: str) -> bool:
        return bool(args.baseline_models) and bool(re.search(args.baseline_models, test))

    for s in sites:
        # Baseline models first (so that the first killer tells whether
        # they alone kill the mutant), each group cheapest first.
        s.covered_by = sorted(coverage.get(s.first, []),
                              key=lambda t: (not is_base(t), baseline[t]))

    def run_mutant(site: Site, k: int) -> tuple[str, float]:
        n = site.first + k
        start = time.monotonic()
        timed_out: list[str] = []
        for test in site.covered_by:
            timeout = min(args.timeout, 30 * baseline[test] + 60)
            r = run_model(exe, test, {"MEMCG_LOOM_MUTANT": str(n)}, timeout)
            if r.timed_out:
                timed_out.append(short(test))
                continue
            if not r.ok:
                return short(test), time.monotonic() - start
        if not site.covered_by:
            return "not reached", 0.0
        if timed_out:
            return f"TIMEOUT ({', '.join(timed_out)})", time.monotonic() - start
        return "SURVIVED", time.monotonic() - start

    results: dict[tuple[int, int], tuple[str, float]] = {}

    def run_site(site: Site) -> None:
        # Mutants of a site go weakest first (SeqCst -> Relaxed before the
        # AcqRel class, a removed fence before a weaker one): when the
        # weakest survives, the stronger ones cannot fail (loom explores a
        # subset of its behaviours), so they are not run.
        implied = site.original == "SeqCst"
        for k, w in enumerate(site.weaker):
            if k > 0 and implied and results[(site.first, 0)][0] == "SURVIVED":
                results[(site.first, k)] = (f"SURVIVED (as -> {site.weaker[0]})", 0.0)
            else:
                results[(site.first, k)] = run_mutant(site, k)
            print(f"  {site.location} {site.original}->{w}: "
                  f"{results[(site.first, k)][0]}", file=sys.stderr)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        # Sites covered by many models first, so the slow ones overlap.
        order = sorted(sites, key=lambda s: -sum(baseline[t] for t in s.covered_by))
        for fut in concurrent.futures.as_completed([pool.submit(run_site, s) for s in order]):
            fut.result()

    def kind_of(res: str) -> str:
        if res.startswith("SURVIVED"):
            return "SURVIVED"
        if res.startswith("TIMEOUT"):
            return "timeout"
        return "not reached" if res == "not reached" else "killed"

    def base_result(site: Site, res: str) -> str:
        """What the baseline models alone give for a mutant with `res`."""
        if not any(is_base(t) for t in site.covered_by):
            return "not reached"
        if kind_of(res) == "killed" and not is_base("tests::" + res.split(" ")[0]):
            return "SURVIVED"
        return res

    base = bool(args.baseline_models)
    rows = ["| # | location | access | mutation | killed by |"
            + (" baseline models only |" if base else ""),
            "|---|---|---|---|---|" + ("---|" if base else "")]
    counts: dict[str, int] = {}
    base_counts: dict[str, int] = {}
    for s in sites:
        for k, w in enumerate(s.weaker):
            res, secs = results[(s.first, k)]
            counts[kind_of(res)] = counts.get(kind_of(res), 0) + 1
            row = f"| {s.first + k} | {s.location} | {s.access} | {s.original} -> {w} | {res} |"
            if base:
                b = base_result(s, res)
                base_counts[kind_of(b)] = base_counts.get(kind_of(b), 0) + 1
                row += f" {b} |"
            rows.append(row)
    table = "\n".join(rows)
    summary = (f"{n_mutants} mutants at {len(sites)} sites: "
               + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
               + f"; LOOM_MAX_PREEMPTIONS={os.environ.get('LOOM_MAX_PREEMPTIONS', '2')}, "
               + f"{len(models)} models, {time.monotonic() - t0:.0f}s")
    if base:
        summary += ("\nbaseline models only: "
                    + ", ".join(f"{v} {k}" for k, v in sorted(base_counts.items())))
    print(table)
    print()
    print(summary)
    if args.out:
        Path(args.out).write_text(table + "\n\n" + summary + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
