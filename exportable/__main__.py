"""Command line: ``python -m exportable list | show | export | verify | placement | triton``.

    python -m exportable list
    python -m exportable export nms --out build/onnx --param iou_threshold=0.7
    python -m exportable verify            # every entry, eager vs onnxruntime
    python -m exportable verify nms --param iou_threshold=0.7 --providers CPUExecutionProvider
    python -m exportable placement max_iou_assigner   # where the CUDA provider will run each node
    python -m exportable triton --out build/triton nms retinanet_postprocess
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from exportable import catalog
from exportable import onnx as xonnx


def _cmd_list(args: argparse.Namespace) -> int:
    width = max(len(n) for n in catalog.names())
    for entry in catalog.CATALOG.values():
        print(f"{entry.name:<{width}}  {entry.summary}")
        if args.verbose:
            print("\n".join("    " + line for line in entry.describe().splitlines()[1:]))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    print(catalog.get(args.name).describe())
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    entry = catalog.get(args.name)
    params = catalog.parse_params(args.param)
    t0 = time.perf_counter()
    model = entry.export(**params)
    path = xonnx.save(model, Path(args.out) / f"{entry.name}.onnx")
    io = xonnx.graph_io(model)
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB, {len(model.graph.node)} nodes, "
          f"opset {model.opset_import[0].version}) in {time.perf_counter() - t0:.1f} s")
    for kind in ("inputs", "outputs"):
        for t in io[kind]:
            print(f"  {kind[:-1]:<6} {t['name']:<12} {t['dtype']:<8} {tuple(t['shape'])}")
    if args.json:
        print(json.dumps(io))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    names = args.names or catalog.names()
    params = catalog.parse_params(args.param)
    providers = args.providers.split(",") if args.providers else None
    failed = 0
    for name in names:
        entry = catalog.get(name)
        t0 = time.perf_counter()
        report = entry.verify(providers=providers, **(params if args.names else {}))
        ok = all(c.close for _, _, cmps in report for c in cmps)
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name} ({len(report)} runs, {time.perf_counter() - t0:.1f} s)")
        for sizes, seed, cmps in report:
            if args.verbose or not all(c.close for c in cmps):
                for c in cmps:
                    print(f"     {sizes} seed {seed}: {c}")
    print(f"{len(names) - failed} of {len(names)} components agree with eager")
    return 1 if failed else 0


def _cmd_placement(args: argparse.Namespace) -> int:
    from exportable import placement

    names = args.names or catalog.names()
    params = catalog.parse_params(args.param)
    failed = 0
    for name in names:
        model = catalog.get(name).export(**(params if args.names else {}))
        pred = placement.predict(model, optimize=not args.as_exported)
        bad = pred.compute_fallbacks
        failed += bool(bad)
        print(f"{'FAIL' if bad else 'ok  '} {name}: {pred.report(all_nodes=args.all_nodes)}")
    if len(names) > 1:
        print(f"{len(names) - failed} of {len(names)} graphs keep every compute node on CUDA (predicted)")
    return 1 if failed else 0


def _cmd_triton(args: argparse.Namespace) -> int:
    from exportable import triton

    names = args.names or catalog.names()
    params = catalog.parse_params(args.param)
    if params and len(names) != 1:
        raise ValueError("--param needs exactly one NAME (the parameters differ per entry)")
    overrides = {names[0]: params} if params else None
    t0 = time.perf_counter()
    paths = triton.write_repository(args.out, names, overrides=overrides, instances=args.instances)
    for p in paths:
        print(f"wrote {p}")
    print(f"{len(paths)} models in {args.out} ({time.perf_counter() - t0:.1f} s); serve with "
          f"tritonserver --model-repository {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exportable", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list the catalog")
    p.add_argument("-v", "--verbose", action="store_true", help="show parameters and graph I/O")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("show", help="one entry's parameters and graph I/O")
    p.add_argument("name")
    p.set_defaults(func=_cmd_show)
    p = sub.add_parser("export", help="export one entry to DIR/NAME.onnx")
    p.add_argument("name")
    p.add_argument("--out", default="build/onnx")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="also print the I/O contract as JSON")
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser("verify", help="eager vs onnxruntime at sizes other than the export sizes")
    p.add_argument("names", nargs="*")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--providers", default=None, help="comma-separated onnxruntime providers")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_cmd_verify)
    p = sub.add_parser("placement", help="predict which nodes the CUDA provider runs (no GPU needed)")
    p.add_argument("names", nargs="*")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--all-nodes", action="store_true", help="list every node, not only those off CUDA")
    p.add_argument("--as-exported", action="store_true",
                   help="predict on the graph as exported, without onnxruntime's basic optimizations")
    p.set_defaults(func=_cmd_placement)
    p = sub.add_parser("triton", help="write a Triton model repository (config.pbtxt + 1/model.onnx per entry)")
    p.add_argument("names", nargs="*")
    p.add_argument("--out", default="build/triton")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--instances", type=int, default=1, help="instance_group count per model")
    p.set_defaults(func=_cmd_triton)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
