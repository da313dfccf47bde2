"""The facts notebooks 10-12 state in their text, recomputed the way the notebooks compute them.

The notebooks keep no ``assert`` in their cells (``tests/test_course_shape.py``); the sentences they state are
pinned here, running the same lesson code, so that a change in ``lessons``, ``exportable`` or the committed
``benchmarks/results/arena.json`` that moves one shows up as a failing test rather than as a wrong sentence.
Hand-derived values say where they come from; percentages and counts quoted in a sentence are compared as the
sentence rounds them. Notebook 10's data, priors, untrained-assignment and arena-completeness facts live in
``tests/test_arena_notebook.py``, its exercises' checkers there too; 11's first two exercises in
``tests/test_dynamic_soft_label.py``, 12's in ``tests/test_hungarian.py``.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from exportable.assigners.ota import OTAAssigner
from exportable.assigners.simota import SimOTAAssigner
from lessons import dynamic_soft_label as dsl_ref
from lessons import matching as matching_ref
from lessons import one_to_one as o2o
from lessons import simota as simota_ref
from lessons import task_aligned as tal
from lessons.arena import bench
from lessons.arena import train as arena
from lessons.arena.data import CLASSES, KINDS, make_split
from lessons.arena.model import TinyDetector
from lessons.scenes import default_scene

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


# --------------------------------------------------------------------------------------------
# 10 · the arena
# --------------------------------------------------------------------------------------------


def test_10_live_run_takes_64_steps_and_its_loss_falls():
    """Section 4: TOOD, 2 epochs of the 256-image split in batches of 8; "the loss falls"."""
    config = arena.ArenaConfig(train_images=256, val_images=64, epochs=2, warmup_steps=10, eval_every_epoch=False)
    data = arena.ArenaData(make_split("train", 256), make_split("val", 64), None)
    torch.manual_seed(0)
    live = arena.train("tood", seed=0, config=config, data=data, evaluate_at_end=False, progress_bar=False)
    assert len(live.losses) == 2 * 256 // 8
    assert np.mean(live.losses[-5:]) < 0.9 * live.losses[0]
    assert live.positives[0] != live.positives[-1]  # TOOD's positives move with the predictions


@pytest.fixture(scope="module")
def summary():
    return bench.summarise(bench.load_results())


def _outside(summary, better, worse, key):
    """The better method's worst seed above the worse one's best seed (the notebook's verdict "outside")."""
    return summary[better][key][2] > summary[worse][key][3]


def test_10_findings_against_the_papers(summary):
    """Section 9 and its appendix: each comparison's verdict against the seed spread."""
    assert _outside(summary, "atss", "retinanet", "AP")  # ATSS over MaxIoU on AP, outside the spread
    assert not _outside(summary, "atss", "retinanet", "AP50")  # ... but within it on AP50
    assert summary["tood"]["AP"][0] < summary["atss"]["AP"][0]  # TOOD does not beat ATSS here
    assert _outside(summary, "o2f", "tood", "AP") and _outside(summary, "o2f", "tood", "AP50")  # O2F over TOOD
    for kind in KINDS:  # SimOTA first on every scene kind
        assert max(summary, key=lambda n: summary[n][f"AP50_{kind}"][0]) == "simota", kind


def test_10_numbers_quoted_in_the_appendix(summary):
    keep = {n: summary[n]["AP50_no_nms"][0] / summary[n]["AP50"][0] for n in summary}
    assert f"{keep['o2f']:.0%}" == "87%" and f"{keep['simota']:.0%}" == "48%"  # "keeps 87 % ... (SimOTA 48 %)"
    assert f"{keep['retinanet']:.0%}" == "87%"  # "RetinaNet keeps as much (87 %"
    assert summary["o2f"]["dup_per_gt"][0] < summary["simota"]["dup_per_gt"][0] / 3  # "under a third of SimOTA's"
    assert f"{summary['retinanet']['dup_per_gt'][0]:.2f}" == "0.07"  # "with 0.07 duplicates per gt"
    assert f"{summary['retinanet']['gts_without_pos'][0]:.0%}" == "3%"  # "MaxIoU also leaves only 3 %"
    assert f"{summary['retinanet']['pos_per_gt'][0]:.1f}" == "1.6"  # "It gives 1.6 positives per gt"
    assert round(summary["simota"]["pos_per_gt"][0]) == 4  # "about four positives"
    for name in ("atss", "tood", "o2f"):  # "leave more than 20 % of the gts without any positive"
        assert summary[name]["gts_without_pos"][0] > 0.2, name


def test_10_detector_size_quoted():
    params = sum(p.numel() for p in TinyDetector(len(CLASSES)).parameters())
    assert f"{params / 1e6:.2f}" == "0.68"  # "a 0.68 M-parameter detector"


# --------------------------------------------------------------------------------------------
# 11 · soft labels and one-to-one assignment
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_11():
    points, strides, scores, boxes, gt_boxes, gt_labels = dsl_ref.photo_inputs("strong")
    return (dsl_ref.dsl_assign(points, strides, scores, boxes, gt_boxes, gt_labels),
            simota_ref.simota_assign(points, strides, scores, boxes, gt_boxes, gt_labels))


def test_11_same_candidates_and_more_positives_than_simota(photo_11):
    dsl, ota = photo_11
    assert torch.equal(dsl.candidates, ota.candidates)  # "both assigners keep the same candidates here"
    assert (dsl.positives_per_gt > ota.positives_per_gt).all()  # "every gt takes a few more points"
    assert (dsl.dynamic_ks >= ota.dynamic_ks).all()  # top-13 IoUs sum to at least the top-10


def test_11_one_to_one_is_the_top_of_the_one_to_many_list():
    points, _, scores, boxes, gt_boxes, gt_labels = o2o.photo_inputs()
    many, one = o2o.dual_assign(points, scores, boxes, gt_boxes, gt_labels)
    chosen = (one.gt_index >= 0).nonzero()[:, 0]
    assert len(chosen) == len(gt_boxes)  # one positive per gt
    assert torch.equal(many.gt_index[chosen], one.gt_index[chosen])  # each is a one-to-many positive of its gt
    seven = tal.ultralytics_assign(points, scores, boxes, gt_boxes, gt_labels, topk=7)
    yolo26 = o2o.one_to_one_assign(points, scores, boxes, gt_boxes, gt_labels, topk=7, topk2=1)
    assert torch.bincount(seven.gt_index[seven.gt_index >= 0]).tolist() == [7] * len(gt_boxes)
    assert torch.equal(yolo26.gt_index, one.gt_index)  # "the same six points as YOLOv10's"


def test_11_toy_conflict():
    """Section 7's toy, derived by hand: point 1 predicts b exactly, so the conflict gives it to b; with topk 1 gt
    a has no positive left, with topk 7 and topk2 1 a keeps point 0 (its only final positive)."""
    a, b = [0.0, 0.0, 32.0, 32.0], [2.0, 2.0, 34.0, 34.0]
    toy = (torch.tensor([[8.0, 8.0], [16.0, 16.0], [30.0, 30.0]]), torch.tensor([[0.01], [0.81], [0.04]]),
           torch.tensor([a, b, b]), torch.tensor([a, b]), torch.tensor([0, 0]))
    v10 = o2o.one_to_one_assign(*toy, topk=1).gt_index
    v26 = o2o.one_to_one_assign(*toy, topk=7, topk2=1).gt_index
    assert int(v10[1]) == 1 and 0 not in v10.tolist()
    assert int(v26[0]) == 0 and int(v26[1]) == 1


def _notebook_def(notebook: str, name: str, namespace: dict):
    for cell in json.loads((NOTEBOOKS / notebook).read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and f"def {name}(" in source:
            defs = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)]
            exec(compile(ast.Module(body=defs, type_ignores=[]), f"{notebook}:{name}", "exec"), namespace)  # noqa: S102
            return namespace[name]
    raise LookupError(f"{notebook} has no cell defining {name}")


def test_11_exercise_3_notebook_solution_passes_its_checker():
    solution = _notebook_def("11_soft_and_one_to_one.ipynb", "my_second_selection", {"torch": torch, "tal": tal})
    o2o.check_second_selection(solution)


# --------------------------------------------------------------------------------------------
# 12 · matching as transport
# --------------------------------------------------------------------------------------------

HAND = torch.tensor([[1.0, 2.0, 9.0], [1.5, 9.0, 9.0], [9.0, 3.0, 4.0]])  # notebook 12's hand case (Q, M)


def test_12_hand_case_optimum_beats_greedy():
    """By hand: greedy takes (0, 0) = 1, then 9 + 3 = 13; the optimum 2 + 1.5 + 4 = 7.5."""
    best = matching_ref.brute_force_matching(HAND)
    assert best.tolist() == [1, 0, 2]
    assert matching_ref.matching_total(HAND, best) == 7.5


def test_12_sinkhorn_tends_to_the_matching():
    hand = HAND.T  # (M, Q) gts as suppliers
    wide = matching_ref.sinkhorn(hand, torch.ones(3), torch.ones(3), 3.0, 200)
    assert (wide[0] > 0.02).all()  # "at eps = 3 gt 0's unit is spread over all three queries"
    sharp = matching_ref.sinkhorn(hand, torch.ones(3), torch.ones(3), 0.3, 500)
    assert sharp[0, 1] > 0.997  # "(all but 0.3 %) on query 1"
    assert abs(float((sharp * hand.double()).sum()) - 7.5) < 0.01  # "within 0.01 of the optimum 7.5"


def test_12_ota_and_simota_on_the_photo():
    scene = default_scene()
    points, strides, _ = simota_ref.photo_points(scene.hw)
    batch = scene.as_batch()
    per_gt = {}
    for quality in ("weak", "strong"):
        scores, boxes = simota_ref.synthetic_predictions(points, strides, scene.boxes, scene.labels,
                                                         scene.num_classes, quality)
        args = (points, strides, scores[None], boxes[None], batch.gt_boxes, batch.gt_labels, batch.gt_mask)
        s, o = SimOTAAssigner()(*args).gt_index[0], OTAAssigner()(*args).gt_index[0]
        ks = simota_ref.simota_assign(points, strides, scores, boxes, scene.boxes, scene.labels).dynamic_ks
        per_gt[quality] = (torch.bincount(s[s >= 0], minlength=6), torch.bincount(o[o >= 0], minlength=6), ks)
    simota, ota, ks = per_gt["weak"]
    person = scene.names().index("person")
    assert ks.tolist() == [1] * 6  # "k = 1 for every gt"
    assert simota[person] == 0 and (ota == 1).all()  # the person ends with nothing under SimOTA, not under OTA
    simota, ota, ks = per_gt["strong"]
    assert set(ks.tolist()) == {8, 9} and torch.equal(simota, ks)  # "against k = 8 or 9"
    assert int(ota.min()) == 7 and int(ota.max()) == 11  # "7 to 11 points here"
