"""``make arena``: every recipe x 3 seeds, the onnxruntime proof, and the report under ``benchmarks/results/``.

Shape shorthand: ``N`` priors, ``M`` gts of one image. Boxes are ``(x1, y1, x2, y2)`` in absolute pixels.

Writes:

- ``arena.json``: the configuration, the machine, every run (metrics, training seconds, loss per step,
  validation AP50 per epoch), the positives of each recipe (seed 0) on two validation images, and the
  onnxruntime-backend comparison;
- ``arena.md``: the tables (mean +- sample std over seeds, and the min-max range), which differences lie
  within the seed spread, and the onnxruntime proof;
- ``arena_ap.png`` (AP per assigner) and ``arena_curves.png`` (training loss, validation AP50 per epoch);
- the COCO annotation files of both splits under ``build/arena/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lessons.arena.data import CLASSES, IMAGE_SIZE, KINDS, to_batch, write_coco
from lessons.arena.model import decode_boxes, make_priors
from lessons.arena.recipes import RECIPES, Predictions, Progress
from lessons.arena.train import DEFAULT_CONFIG, ArenaConfig, ArenaData, RunResult, load_data, train

__all__ = [
    "RESULTS_DIR", "SHOWCASE_IMAGES", "load_results", "run_arena", "positives_on", "summarise", "write_report",
    "plot_ap", "plot_curves",
]

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"  # make arena's committed report
SHOWCASE_IMAGES = (5, 10)  # validation images whose positives arena.json keeps: a "small" and a "crowded" scene
TABLE = (  # (key, header, format)
    ("AP", "AP", ".3f"), ("AP50", "AP50", ".3f"), ("AP_small", "AP_small", ".3f"),
    ("AP50_no_nms", "AP50 no NMS", ".3f"), ("dup_per_gt", "dup / gt (no NMS)", ".3f"),
    ("pos_per_gt", "positives / gt", ".2f"), ("gts_without_pos", "gts w/o positive", ".3f"),
    ("train_seconds", "train s", ".0f"),
)


@torch.no_grad()
def positives_on(model, name: str, data: ArenaData, config: ArenaConfig, index: int) -> list[list[float]]:
    """``[prior, gt, target_score]`` for every positive of validation image ``index`` after training."""
    recipe = RECIPES[name]
    model.eval()
    priors = make_priors(IMAGE_SIZE, anchor_scale=config.anchor_scale)
    images, gts = to_batch(data.val, [index])
    out = model(images)
    pred = Predictions(out.cls_logits, decode_boxes(priors, out.box_deltas), out.quality_logits)
    res = recipe.assign(recipe.build(len(CLASSES)), priors, pred, gts, Progress(config.epochs - 1, config.epochs))
    pos = res.gt_index[0] >= 0  # (N,)
    idx = torch.nonzero(pos).squeeze(1)  # (P,)
    return [[int(i), int(res.gt_index[0, i]), round(float(res.target_scores[0, i]), 4)] for i in idx]


def _run_record(run: RunResult, data: ArenaData) -> dict[str, Any]:
    """A run as JSON: metrics, seconds, the full loss curve, AP50 per epoch, positives on the showcase images."""
    return {
        "recipe": run.recipe, "seed": run.seed, "backend": run.backend,
        "train_seconds": round(run.train_seconds, 2),
        "metrics": {k: (None if v != v else v) for k, v in run.metrics.items()},
        "epoch_ap50": [[e, v] for e, v in run.epoch_ap50],
        "losses": run.losses,
        "positives": {str(i): positives_on(run.model, run.recipe, data, run.config, i) for i in SHOWCASE_IMAGES},
        "backend_checks": {
            "steps_same_assignment": int(sum(c["same_assignment"] for c in run.backend_checks)),
            "max_float_diff": max((c["max_float_diff"] for c in run.backend_checks), default=0.0),
        },
    }


def _onnx_record(eager: dict[str, Any], ort: dict[str, Any]) -> dict[str, Any]:
    a, b = np.asarray(eager["losses"]), np.asarray(ort["losses"])
    same_len = len(a) == len(b)
    return {
        "recipe": ort["recipe"], "seed": ort["seed"], "steps": len(b),
        "steps_same_assignment": ort["backend_checks"]["steps_same_assignment"],
        "max_float_diff_vs_eager_assigner": ort["backend_checks"]["max_float_diff"],
        "loss_curves_bit_identical": bool(same_len and np.array_equal(a, b)),
        "max_abs_loss_diff": float(np.abs(a - b).max()) if same_len else None,
        "max_rel_loss_diff": float((np.abs(a - b) / np.abs(a)).max()) if same_len else None,
        "metrics_eager": {k: round(v, 5) for k, v in eager["metrics"].items() if v is not None},
        "metrics_onnxruntime": {k: round(v, 5) for k, v in ort["metrics"].items() if v is not None},
        "train_seconds_eager": eager["train_seconds"],
        "train_seconds_onnxruntime": ort["train_seconds"],
    }


_RUN_CODE = ("data.py", "model.py", "losses.py", "recipes.py", "train.py", "evaluate.py")  # what a run's numbers read


def _code_hash() -> str:
    """Hash of the code a run's numbers depend on: the arena's training and evaluation, and ``exportable``.
    (Not this report's code: a new plot does not need new runs.)"""
    import exportable

    here = Path(__file__).parent
    h = hashlib.sha1()
    for path in [here / name for name in _RUN_CODE] + sorted(Path(exportable.__file__).parent.rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()


def _rounded(record: dict[str, Any]) -> dict[str, Any]:
    """A run record for arena.json: floats rounded to 5 decimals (the cache keeps them exact)."""
    out = {k: v for k, v in record.items() if k not in ("positives", "backend_checks")}
    if "losses" in out:
        out["metrics"] = {k: (None if v is None else round(v, 5)) for k, v in out["metrics"].items()}
        out["epoch_ap50"] = [[e, round(v, 5)] for e, v in out["epoch_ap50"]]
        out["losses"] = [round(v, 5) for v in out["losses"]]
    return out


def run_arena(
    recipes: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    config: ArenaConfig = DEFAULT_CONFIG,
    out: str | Path = "benchmarks/results",
    build: str | Path = "build/arena",
    *,
    onnx_check: bool = True,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Train every recipe with every seed, evaluate, and write the report files; returns arena.json's dict.

    Each finished run is cached under ``<build>/runs/`` (keyed by the configuration, the recipe, the seed, the
    backend and a hash of the code), so an interrupted ``make arena`` resumes where it stopped; the report
    says how many runs came from the cache.
    """
    names = list(RECIPES) if recipes is None else list(recipes)
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    data = load_data(config)
    write_coco(data.train, build)
    write_coco(data.val, build)
    cache = Path(build) / "runs"
    cache.mkdir(parents=True, exist_ok=True)
    code = _code_hash()
    cached = 0

    def one(name: str, seed: int, backend: str) -> dict[str, Any]:
        nonlocal cached
        key = hashlib.sha1(json.dumps([asdict(config), name, seed, backend, SHOWCASE_IMAGES, code]).encode())
        path = cache / f"{name}_seed{seed}_{backend}_{key.hexdigest()[:12]}.json"
        if path.exists():
            cached += 1
            return json.loads(path.read_text())
        try:
            run = train(name, seed, config, data, assign_backend=backend, check_backend=backend != "eager",
                        progress_bar=progress_bar)
        except (FloatingPointError, RuntimeError) as err:  # a diverged run is reported, not hidden
            return {"recipe": name, "seed": seed, "backend": backend, "error": f"{type(err).__name__}: {err}"}
        record = _run_record(run, data)
        path.write_text(json.dumps(record))
        return record

    runs, positives, onnx = [], {}, None
    for name in names:
        for seed in seeds:
            record = one(name, seed, "eager")
            runs.append(record)
            if seed == seeds[0] and "error" not in record:
                positives[name] = record["positives"]
                if onnx_check and RECIPES[name].onnx_entry is not None and onnx is None:
                    ort = one(name, seed, "onnxruntime")
                    onnx = _onnx_record(record, ort) if "error" not in ort else {"error": ort["error"]}
    results = {
        "config": asdict(config), "recipes": {n: RECIPES[n].title for n in names}, "seeds": list(seeds),
        "machine": {
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "load_average_start": [round(v, 2) for v in load_start],
            "load_average_end": [round(v, 2) for v in os.getloadavg()],
            "wall_seconds": round(time.perf_counter() - t_start, 1), "runs_from_cache": cached,
        },
        "runs": [_rounded(r) for r in runs], "positives": positives, "showcase_images": list(SHOWCASE_IMAGES),
        "onnxruntime": onnx,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "arena.json").write_text(json.dumps(results, indent=1) + "\n")
    write_report(results, out)
    return results


def load_results(path: str | Path | None = None) -> dict[str, Any]:
    """arena.json's dict: the committed one under ``benchmarks/results/`` unless ``path`` names another."""
    path = RESULTS_DIR / "arena.json" if path is None else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: {path} does not exist; run `make arena` to write it")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------------
# Report


def _eager_runs(results: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in results["runs"] if r["recipe"] == name and r["backend"] == "eager" and "error" not in r]


def _value(run: dict[str, Any], key: str) -> float:
    v = run["train_seconds"] if key == "train_seconds" else run["metrics"].get(key)
    return float("nan") if v is None else float(v)


def summarise(results: dict[str, Any]) -> dict[str, dict[str, tuple[float, float, float, float]]]:
    """``{recipe: {metric: (mean, sample std, min, max)}}`` over seeds (eager runs only)."""
    keys = [k for k, _, _ in TABLE] + ["AP75", "AP_no_nms"] + [f"AP50_{k}" for k in KINDS]
    out: dict[str, dict[str, tuple[float, float, float, float]]] = {}
    for name in results["recipes"]:
        rows = _eager_runs(results, name)
        out[name] = {}
        for key in keys:
            vals = np.array([_value(r, key) for r in rows])
            std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            out[name][key] = (float(vals.mean()), std, float(vals.min()), float(vals.max()))
    return out


def _spread_sentences(summary: dict[str, dict[str, tuple]], key: str, label: str) -> list[str]:
    ranked = sorted(summary, key=lambda n: -summary[n][key][0])
    lines = []
    for a, b in zip(ranked, ranked[1:]):
        ma, _, lo_a, _ = summary[a][key]
        mb, _, _, hi_b = summary[b][key]
        if lo_a <= hi_b:
            lines.append(f"- {label}: `{a}` ({ma:.3f}) over `{b}` ({mb:.3f}) is **within the seed spread** "
                         f"(their min-max ranges overlap).")
        else:
            lines.append(f"- {label}: `{a}` ({ma:.3f}) over `{b}` ({mb:.3f}) is outside the seed spread "
                         f"(worst seed of `{a}` {lo_a:.4f} > best seed of `{b}` {hi_b:.4f}).")
    return lines


def write_report(results: dict[str, Any], out: str | Path) -> Path:
    """``arena.md`` and the two plots from arena.json's dict."""
    out = Path(out)
    summary = summarise(results)
    cfg, mach = results["config"], results["machine"]
    n_seeds = len(results["seeds"])
    steps = (cfg["train_images"] // cfg["batch_size"]) * cfg["epochs"]
    lines = [
        "# Assignment arena: one tiny detector, every assigner",
        "",
        f"`make arena` (`python -m lessons.arena run`): the same detector (3-level FPN, strides 8/16/32, one prior "
        f"per location, anchors {cfg['anchor_scale']:g} x stride) trained from scratch with each assigner and the loss "
        f"its paper pairs with it; {cfg['train_images']} training images of {IMAGE_SIZE} x {IMAGE_SIZE}, "
        f"{cfg['epochs']} epochs = {steps} steps of {cfg['batch_size']}, AdamW {cfg['lr']:g}; "
        f"{cfg['val_images']} validation images; seeds {', '.join(map(str, results['seeds']))}. AP by pycocotools "
        "(COCO bbox protocol; AP_small: area < 32^2 px). NMS: class-aware, IoU 0.6, top 100. Without NMS: the "
        "100 best (prior, class) pairs.",
        "",
        f"Machine: {mach['cpus']} CPUs, torch {mach['torch']} with {mach['torch_threads']} threads; load average "
        f"{mach['load_average_start'][0]} at the start and {mach['load_average_end'][0]} at the end (a shared machine: "
        f"training seconds are noisy and only comparable within this run). Wall time of this invocation: "
        f"{mach['wall_seconds'] / 60:.1f} min, with {mach.get('runs_from_cache', 0)} of the runs taken from the cache "
        f"of an earlier invocation (measured then). Training seconds of all runs together: "
        f"{sum(r.get('train_seconds', 0) for r in results['runs']) / 60:.1f} min."
        + (f" {mach['note']}" if mach.get("note") else ""),
        "",
        f"## Results (mean +- sample std over {n_seeds} seeds; [min, max] below)",
        "",
        "| assigner | " + " | ".join(h for _, h, _ in TABLE) + " |",
        "|---|" + "---:|" * len(TABLE),
    ]
    for name, title in results["recipes"].items():
        cells = [f"{summary[name][k][0]:{f}} +- {summary[name][k][1]:{f}}" for k, _, f in TABLE]
        lines.append(f"| `{name}`: {title} | " + " | ".join(cells) + " |")
    lines += ["", "| assigner | " + " | ".join(h for _, h, _ in TABLE) + " |", "|---|" + "---:|" * len(TABLE)]
    for name in results["recipes"]:
        cells = [f"[{summary[name][k][2]:{f}}, {summary[name][k][3]:{f}}]" for k, _, f in TABLE]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += ["", "AP50 per scene kind (mean +- std):", "",
              "| assigner | " + " | ".join(KINDS) + " |", "|---|" + "---:|" * len(KINDS)]
    for name in results["recipes"]:
        cells = [f"{summary[name][f'AP50_{k}'][0]:.3f} +- {summary[name][f'AP50_{k}'][1]:.3f}" for k in KINDS]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    best = max(summary, key=lambda n: summary[n]["AP50"][0])
    lines += [
        "",
        f"Best AP50: `{best}`, {summary[best]['AP50'][0]:.3f}; worst: "
        f"`{min(summary, key=lambda n: summary[n]['AP50'][0])}`, {min(v['AP50'][0] for v in summary.values()):.3f}.",
        "",
        "## Which differences are real",
        "",
        f"Neighbours in the ranking, compared with the spread of {n_seeds} seeds:",
        "",
    ]
    lines += _spread_sentences(summary, "AP", "AP") + _spread_sentences(summary, "AP50", "AP50")
    lines += _spread_sentences(summary, "AP_small", "AP_small")
    onnx = results.get("onnxruntime")
    if onnx and "error" in onnx:
        lines += ["", f"## Assignment through onnxruntime: the run failed: {onnx['error']}"]
    elif onnx:
        lines += [
            "",
            "## Assignment through onnxruntime (`--assign-backend onnxruntime`)",
            "",
            f"`{onnx['recipe']}` seed {onnx['seed']} trained again with the exported assigner graph run by onnxruntime "
            "inside the training loop (the eager assigner ran beside it on the same inputs, for the comparison only):",
            "",
            f"- steps with the same assignment (gt_index and labels equal): {onnx['steps_same_assignment']} of "
            f"{onnx['steps']};",
            f"- largest difference of a float field (boxes, overlaps, target_scores, weights) from the eager assigner: "
            f"{onnx['max_float_diff_vs_eager_assigner']:.3g} (the catalog entry's tolerance is 1e-6);",
            f"- loss curve bit-identical to the eager run: {'yes' if onnx['loss_curves_bit_identical'] else 'no'} "
            f"(largest difference {onnx['max_abs_loss_diff']:.3g} absolute, {onnx['max_rel_loss_diff']:.3g} relative);",
            f"- validation AP50: eager {onnx['metrics_eager']['AP50']:.4f}, onnxruntime "
            f"{onnx['metrics_onnxruntime']['AP50']:.4f}; training seconds {onnx['train_seconds_eager']:.0f} vs "
            f"{onnx['train_seconds_onnxruntime']:.0f} (the onnxruntime run also ran the eager assigner).",
        ]
    failed = [r for r in results["runs"] if "error" in r]
    if failed:
        lines += ["", "## Runs that failed", ""] + [f"- `{r['recipe']}` seed {r['seed']}: {r['error']}" for r in failed]
    lines += ["", "Plots: `arena_ap.png` (AP per assigner), `arena_curves.png` (training loss, validation AP50 per "
              "epoch). Raw numbers: `arena.json`.", ""]
    path = out / "arena.md"
    path.write_text("\n".join(lines))
    plot_ap(results).savefig(out / "arena_ap.png", dpi=110)
    plot_curves(results).savefig(out / "arena_curves.png", dpi=110)
    return path


def plot_ap(results: dict[str, Any]):
    """Grouped bars: AP, AP50, AP_small and AP50 without NMS per assigner; one dot per seed."""
    from lessons.draw import _new_figure, color_for

    keys = (("AP", "AP"), ("AP50", "AP50"), ("AP_small", "AP_small"), ("AP50_no_nms", "AP50 no NMS"))
    names = list(results["recipes"])
    fig = _new_figure(8.0, 3.6)
    ax = fig.add_subplot()
    width = 0.8 / len(keys)
    for k, (key, label) in enumerate(keys):
        for i, name in enumerate(names):
            vals = [_value(r, key) for r in _eager_runs(results, name)]
            x = i + (k - (len(keys) - 1) / 2) * width
            ax.bar(x, np.mean(vals), width * 0.9, color=color_for(k), label=label if i == 0 else None, alpha=0.85)
            ax.plot([x] * len(vals), vals, "k.", markersize=3)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("validation score")
    ax.set_title(f"Arena: mean over {len(results['seeds'])} seeds (dots: each seed)")
    ax.legend(ncols=len(keys), fontsize=8, loc="upper left")
    top = max((_value(r, k) for n in names for r in _eager_runs(results, n) for k, _ in keys), default=0.0)
    ax.set_ylim(0, min(1.0, 1.3 * top + 0.02))  # room for the legend above the highest dot
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_curves(results: dict[str, Any]):
    """Top: each recipe's training loss (its own loss, so its own scale), smoothed; bottom: validation AP50."""
    from lessons.draw import _new_figure, color_for

    names = list(results["recipes"])
    fig = _new_figure(2.3 * len(names), 5.0)
    grid = fig.add_gridspec(2, len(names))
    for i, name in enumerate(names):
        ax = fig.add_subplot(grid[0, i])
        for r in _eager_runs(results, name):
            loss = np.asarray(r["losses"])
            k = 15
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid") if len(loss) > k else loss
            ax.plot(np.arange(len(smooth)) + (len(loss) - len(smooth)) // 2, smooth, color=color_for(i), lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        if i == 0:
            ax.set_ylabel("training loss (own scale)", fontsize=8)
        ax.tick_params(labelsize=7)
    ax = fig.add_subplot(grid[1, :])
    for i, name in enumerate(names):
        runs = [r for r in _eager_runs(results, name) if r["epoch_ap50"]]
        if not runs:
            continue
        x = np.array([e for e, _ in runs[0]["epoch_ap50"]])  # (E,) the evaluated epochs
        curves = np.array([[v for _, v in r["epoch_ap50"]] for r in runs])  # (seeds, E)
        ax.plot(x, curves.mean(0), "-o", color=color_for(i), label=name, markersize=3)
        ax.fill_between(x, curves.min(0), curves.max(0), color=color_for(i), alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation AP50")
    ax.legend(fontsize=8, ncols=len(names))
    ax.grid(alpha=0.3)
    return fig
