"""Peers side by side: mmdetection and ultralytics on the workloads of docs/workloads.md, next to ours.

    python benchmarks/peers.py                          # every suite (what `make bench-peers` runs)
    python benchmarks/peers.py --suite maxiou --threads 2 --repeats 3
    python benchmarks/peers.py --setup-only             # only create/check the peer environments
    python benchmarks/peers.py --peer mmdet --rebuild   # recreate one peer environment
    python benchmarks/peers.py --rounds 3               # interleave 3 subprocesses per implementation (steadier)

Optional tooling, never part of `make test` or CI. Each peer gets its own virtual environment
under ``benchmarks/.peers/<peer>/`` (git-ignored), created once and marked with a stamp file that
holds a hash of its specification (a changed specification rebuilds it). Every environment pins
torch 2.13.0 and pip must resolve it to a CPU build (checked with a dry run before anything is
installed: an unpinned or CUDA torch is never downloaded).

Rules (as for ``benchmarks/run.py`` and docs/conventions.md): one run measures every implementation side by
side on the same inputs (generated once in our venv and saved as .npy, loaded by every child);
each measurement runs in its own subprocess (peak RSS only grows within a process) with fixed
thread counts; median of ``--repeats`` runs after one warm-up, per image. Ratios measured in one
run are the result; absolute CPU times are only indicative. Each suite writes
``benchmarks/results/peers_<suite>.md``. Measurement subprocesses run with glibc told to keep freed
memory (``--malloc keep``, see ``MALLOC_KEEP``); ``--malloc default`` measures the stock allocator.

A peer that cannot be set up (no network, a version missing) is reported and skipped; the script
exits 0 unless nothing at all could be measured.

The parts: ``peer_envs.py`` (the peers' virtual environments), ``peer_suites.py`` (inputs, peers and our
implementations per suite; adding ours is one entry in ``OURS``), ``peer_child.py`` (the measurement
subprocess, run by every interpreter) and this file (the parent: runs, parity, tables).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from peer_child import CHILD_ENV, _slug, _spawn
from peer_envs import ENVS, MALLOC_KEEP, RESULTS, ROOT, SetupError, ensure_env
from peer_suites import OURS, SUITES, Suite
from run import _cpu  # the harness's CPU-model reader (benchmarks/ is on sys.path for these scripts)

# ----------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------


def _fmt_ms(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _compare(a, b) -> str:
    """Per-image comparison of two (B, ...) arrays: max |difference| for floats, mismatch counts for integers."""
    import numpy as np

    if a.shape != b.shape:
        return f"shapes differ: {a.shape} vs {b.shape}"
    if np.issubdtype(a.dtype, np.floating) or np.issubdtype(b.dtype, np.floating):
        per = [float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
               for x, y in zip(a, b)]
        worst = max(per) if per else 0.0
        return ("equal in every image (max abs diff 0)" if worst == 0 else
                f"max abs diff {worst:.3g}; per image [{', '.join(f'{p:.2g}' for p in per)}]")
    per = [int(np.sum(x != y)) for x, y in zip(a, b)]
    return ("equal in every image" if sum(per) == 0 else
            f"{sum(per)} of {a.size} differ; per image {per}")


def _parity(suite: Suite, workdir: Path, meta: dict, measured: set[str]) -> list[tuple[str, str]]:
    import numpy as np

    def get(label: str, name: str):
        path = (workdir / f"in__{name}.npy") if label == "inputs" else workdir / f"out__{_slug(label)}__{name}.npy"
        return np.load(path) if (label == "inputs" or label in measured) and path.exists() else None

    rows = []
    ours = [(label, o) for label, o in OURS[suite.name].items() if label in measured]
    for label, o in ours:
        for mine, peer, theirs, transform in o.parity:
            a, b = get(label, mine), get(peer, theirs)
            if a is not None and b is not None:
                what = f"{peer} {theirs}"
                if transform is not None:
                    what, b = f"{what} ({transform.__doc__})", transform(b, meta)
                rows.append((f"`{label}` {mine} vs {what}", _compare(a, b)))
        if suite.extra_parity is not None:
            rows += suite.extra_parity(label, get, meta)
    same = [(x, y) for x, y in zip(ours, ours[1:]) if x[0].rsplit(" ", 1)[0] == y[0].rsplit(" ", 1)[0]]
    for (label_a, a), (label_b, b) in same:  # the same implementation of ours: eager vs onnxruntime
        for name in a.outputs:
            if name in b.outputs and get(label_a, name) is not None and get(label_b, name) is not None:
                rows.append((f"`{label_a}` vs `{label_b}` {name}", _compare(get(label_a, name), get(label_b, name))))
    return rows


def run_suite(suite: Suite, args, pythons: dict[str, Path], skipped: dict[str, str]) -> str | None:
    impls: list[tuple[str, str, Path | str, str]] = []  # (label, kind, python, what is timed)
    for label, peer in suite.peers.items():
        if peer.env in pythons:
            impls.append((label, "peer", pythons[peer.env], peer.timed))
    for label, o in OURS[suite.name].items():
        impls.append((label, "ours", sys.executable, o.timed or o.backend))
    if not impls:
        print(f"  nothing to measure in {suite.name}", flush=True)
        return None
    workloads = [w for w in suite.workloads if not args.workload or w in args.workload]
    rows, parity, failures, versions = [], [], [], {}
    for workload in workloads:
        with tempfile.TemporaryDirectory(prefix="assignlab-peers-") as tmp:
            try:
                _spawn(sys.executable, {"kind": "prepare", "suite": suite.name, "workload": workload, "workdir": tmp},
                       threads=args.threads, ours=True)
            except (RuntimeError, subprocess.SubprocessError) as e:
                failures.append(f"`{workload}`: preparing the inputs failed: {str(e).splitlines()[0]}")
                print(f"  {workload}: preparing inputs failed:\n{e}", flush=True)
                continue
            meta = json.loads((Path(tmp) / "meta.json").read_text())
            res: dict[str, dict] = {}
            failed: set[str] = set()
            for r in range(args.rounds):  # rounds > 1 interleave the implementations (order rotated each round)
                for label, kind, python, _ in impls[r % len(impls):] + impls[: r % len(impls)]:
                    if label in failed:
                        continue
                    spec = {"kind": kind, "suite": suite.name, "workload": workload, "workdir": tmp, "label": label,
                            "threads": args.threads, "repeats": args.repeats}
                    try:
                        got = _spawn(python, spec, threads=args.threads, ours=kind == "ours")
                    except (RuntimeError, subprocess.SubprocessError) as e:
                        failures.append(f"`{workload}` {label}: {str(e).strip().splitlines()[-1][:300]}")
                        print(f"  {workload}: {label} failed:\n{e}", flush=True)
                        failed.add(label)
                        res.pop(label, None)
                        continue
                    if label in res:  # pool the runs of every round; peak RSS is the largest subprocess's
                        got["times"] = res[label]["times"] + got["times"]
                        got["peak_rss_mb"] = max(res[label]["peak_rss_mb"], got["peak_rss_mb"])
                    res[label] = got
                    versions[label] = got["versions"]
            for label, _, _, _ in impls:
                if label in res:
                    ms = statistics.median(res[label]["times"]) * 1000 / meta["batch"]
                    print(f"  {workload}: {label} {_fmt_ms(ms)} ms/img", flush=True)
            if res:
                parity.append((workload, _parity(suite, Path(tmp), meta, set(res))))
            rows.append((workload, meta, res))
    if not any(res for _, _, res in rows):
        return None
    return _table(suite, args, impls, rows, parity, failures, versions, skipped)


def _malloc_text(mode: str) -> str:
    if mode == "keep":
        return ("Every measurement subprocess runs with glibc told to keep freed memory (`MALLOC_MMAP_THRESHOLD_` and "
                "`MALLOC_TRIM_THRESHOLD_` = 16 GiB, `--malloc keep`, the default): with the stock allocator each "
                "tensor above 32 MiB is a fresh mmap whose page faults, slow and load-dependent on these VMs, "
                "dominated the torch figures (the same eager IoU + max: 450-1650 ms/img, 2/3 of it kernel time, vs "
                "a steady 110-145 ms/img kept). `--malloc default` measures the stock allocator.")
    return ("Stock glibc allocator (`--malloc default`): tensors above glibc's mmap threshold are fresh mmaps; their "
            "page faults are slow and load-dependent on these VMs and can dominate the torch figures.")


def _table(suite, args, impls, rows, parity, failures, versions, skipped) -> str:
    peers = [label for label, kind, _, _ in impls if kind == "peer"]
    cmd = " ".join(["python benchmarks/peers.py", *(args.argv or [])])
    load, load0 = os.getloadavg(), args.load_at_start
    runs_text = f"median of {args.repeats} runs after one warm-up"
    if args.rounds > 1:
        runs_text = (f"median of {args.rounds} x {args.repeats} runs ({args.rounds} interleaved subprocesses per "
                     f"implementation, each {args.repeats} runs after one warm-up)")
    lines = [
        f"# Peers: {suite.title}",
        "",
        f"`{cmd}` on {dt.date.today().isoformat()}; {_cpu()}, {os.cpu_count()} cores, **shared**: other work ran "
        f"on the machine during this run (1-minute load average {load0:.1f} at the start, {load[0]:.1f} at the end), "
        "so "
        "absolute times are indicative only; the ratios, measured side by side in this one run, are what count. "
        f"{args.threads} threads for every implementation (torch `set_num_threads`, onnxruntime intra-op threads, "
        f"OMP/MKL variables); {runs_text}, per image; each implementation in "
        "its own subprocess (peak RSS is that process's, imports included) on the same inputs (.npy files written "
        "once from our venv). " + _malloc_text(args.malloc),
        "",
        "Versions:",
    ]
    for label, kind, python, _ in impls:
        if label in versions:
            where = "our `.venv`" if kind == "ours" else f"`{Path(python).parent.parent.relative_to(ROOT)}`"
            vs = ", ".join(f"{k} {v}" for k, v in versions[label].items())
            lines.append(f"- {label} ({where}): {vs}")
    for name, why in skipped.items():
        lines.append(f"- {name}: **not measured**: {why}")
    lines += ["", "What is timed:"]
    lines += [f"- {label}: {what}" for label, _, _, what in impls]
    ratio_heads = "".join(f" | {p} / this" for p in peers)
    lines += ["", f"| workload | B | implementation | ms/img (median) | all runs ms/img | peak RSS MB{ratio_heads} |",
              "|---|---|---|---|---|---" + "|---" * len(peers) + "|"]
    for workload, meta, res in rows:
        med = {lab: statistics.median(r["times"]) * 1000 / meta["batch"] for lab, r in res.items()}
        for label, _, _, _ in impls:
            if label not in res:
                lines.append(f"| `{workload}` | {meta['batch']} | {label} | failed | | " + "| " * len(peers) + "|")
                continue
            r = res[label]
            runs = ", ".join(_fmt_ms(t * 1000 / meta["batch"]) for t in r["times"])
            ratios = "".join(f" | {med[p] / med[label]:.2f}" if p in med else " | –" for p in peers)
            lines.append(f"| `{workload}` | {meta['batch']} | {label} | {_fmt_ms(med[label])} | {runs} "
                         f"| {r['peak_rss_mb']:.0f}{ratios} |")
    if peers:
        lines += ["", "`<peer> / this` > 1 means this implementation is faster than the peer."]
    if any(p for _, p in parity):
        lines += ["", "## Parity on these inputs", "", "| workload | comparison | result |", "|---|---|---|"]
        for workload, prs in parity:
            lines += [f"| `{workload}` | {what} | {figure} |" for what, figure in prs]
    if failures:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in failures]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in suite.notes]
    lines += ["- The machine class is noisy (the same command varied up to 3x between runs, docs/workloads.md): "
              "compare the ratio columns, never absolute times across runs.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="append", choices=sorted(SUITES), help="default: all")
    parser.add_argument("--workload", action="append", help="only these workloads of the suites (default: all)")
    parser.add_argument("--peer", action="append", choices=sorted(ENVS), help="only these peers (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every implementation's subprocess this many times, interleaved, and pool the "
                        "runs (steadier ratios on a shared machine)")
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                        help="keep: every measurement subprocess runs with glibc told to keep freed memory "
                        "(MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ = 16 GiB), so page faults on fresh large "
                        "tensors do not swamp the figures; default: the stock allocator")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--setup-only", action="store_true", help="create/check the peer environments and stop")
    parser.add_argument("--rebuild", action="store_true", help="recreate the peer environments even if stamped")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.load_at_start = os.getloadavg()[0]

    if args.malloc == "keep":
        CHILD_ENV.update(MALLOC_KEEP)
    suites = [SUITES[s] for s in (args.suite or sorted(SUITES))]
    wanted = {p.env for s in suites for p in s.peers.values()}
    if args.peer:
        wanted &= set(args.peer)
    print("peer environments:", flush=True)
    pythons: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name in sorted(wanted):
        try:
            pythons[name] = ensure_env(ENVS[name], rebuild=args.rebuild)
            print(f"  {name}: {pythons[name].parent.parent.relative_to(ROOT)}", flush=True)
        except SetupError as e:
            skipped[ENVS[name].title] = f"its environment could not be set up ({str(e).splitlines()[0]})"
            print(f"  {name}: SKIPPED, environment could not be set up: {e}", flush=True)
    if args.setup_only:
        return 0 if pythons or not wanted else 1

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    measured = 0
    for suite in suites:
        print(f"{suite.name}:", flush=True)
        sk = {t: w for t, w in skipped.items() if t in suite.peers}
        table = run_suite(suite, args, pythons, sk)
        if table is None:
            print(f"  {suite.name}: nothing measured, no table written", flush=True)
            continue
        measured += 1
        path = out / f"peers_{suite.name}.md"
        path.write_text(table)
        print(f"  wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", flush=True)
    if not measured:
        print("nothing could be measured", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

