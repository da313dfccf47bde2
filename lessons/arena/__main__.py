"""``python -m lessons.arena``: ``run`` (``make arena``) or ``train`` one recipe.

    python -m lessons.arena run                          # every recipe x seeds 0 1 2 -> benchmarks/results/arena*
    python -m lessons.arena run --recipes tood o2f --seeds 0
    python -m lessons.arena train tood --assign-backend onnxruntime --check
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from lessons.arena.recipes import RECIPES
from lessons.arena.train import ArenaConfig, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessons.arena", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="every recipe x seeds; writes arena.md, arena.json and plots")
    run.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=None)
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    run.add_argument("--out", default="benchmarks/results")
    run.add_argument("--build", default="build/arena", help="where the COCO annotation files go")
    run.add_argument("--epochs", type=int, default=None)
    run.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime-backend run")
    one = sub.add_parser("train", help="train one recipe and print its validation metrics")
    one.add_argument("recipe", choices=sorted(RECIPES))
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--epochs", type=int, default=None)
    one.add_argument("--assign-backend", choices=("eager", "onnxruntime"), default="eager")
    one.add_argument("--check", action="store_true", help="with onnxruntime: compare with the eager assigner each step")
    args = parser.parse_args(argv)
    config = ArenaConfig() if args.epochs is None else replace(ArenaConfig(), epochs=args.epochs)
    if args.command == "run":
        from lessons.arena.bench import run_arena

        results = run_arena(args.recipes, args.seeds, config, args.out, args.build, onnx_check=not args.no_onnx)
        print(f"wrote {args.out}/arena.md, arena.json, arena_ap.png, arena_curves.png "
              f"({results['machine']['wall_seconds'] / 60:.1f} min)")
        return 0
    result = train(args.recipe, args.seed, config, assign_backend=args.assign_backend, check_backend=args.check)
    for key, value in result.metrics.items():
        print(f"{key:16s} {value:.4f}")
    print(f"{'train_seconds':16s} {result.train_seconds:.1f}")
    if result.backend_checks:
        same = sum(c["same_assignment"] for c in result.backend_checks)
        worst = max(c["max_float_diff"] for c in result.backend_checks)
        print(f"onnxruntime vs eager: same assignment at {same:.0f} of {len(result.backend_checks)} steps; "
              f"largest float difference {worst:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
