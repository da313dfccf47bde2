"""Every catalog entry's eager module rejects bad input with an error that names the argument."""

from __future__ import annotations

import pytest
import torch

from exportable import catalog

NAMES = catalog.names()


def _float_inputs(entry):
    return [i for i, s in enumerate(entry.inputs) if s.dtype == "float32"]


def _arg_pattern(entry, i):
    name = entry.inputs[i].name
    # AnchorGrid / PointGrid take *feats: their graph inputs feat0..featL are reported as feats[i]
    return rf"({name}|feats\[{i}\])"


@pytest.mark.parametrize("name", NAMES)
def test_nan_is_rejected_naming_the_argument(name):
    entry = catalog.get(name)
    module = entry.build()
    for i in _float_inputs(entry):
        args = list(entry.example(entry.test_sizes[-1] if entry.test_sizes[-1].get("N", 1) else entry.export_sizes))
        if args[i].numel() == 0 or name in ("anchor_grid", "point_grid"):
            continue  # feature maps are read for their shapes only: their values are never used
        args[i] = args[i].clone()
        args[i].view(-1)[0] = float("nan")
        with pytest.raises(ValueError, match=_arg_pattern(entry, i)):
            module(*args)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_dtype_is_rejected_naming_the_argument(name):
    entry = catalog.get(name)
    module = entry.build()
    for i, spec in enumerate(entry.inputs):
        if name in ("anchor_grid", "point_grid"):
            continue
        args = list(entry.example())
        args[i] = args[i].to(torch.int64) if spec.dtype == "float32" else args[i].to(torch.float32)
        with pytest.raises((TypeError, ValueError), match=_arg_pattern(entry, i)):
            module(*args)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_last_dim_is_rejected(name):
    entry = catalog.get(name)
    module = entry.build()
    for i, spec in enumerate(entry.inputs):
        if not spec.dims or spec.dims[-1] not in (2, 4):  # 0-d inputs (e.g. an avg_factor) have no last dim
            continue
        args = list(entry.example())
        args[i] = args[i][..., :-1]
        with pytest.raises(ValueError, match=_arg_pattern(entry, i)):
            module(*args)


@pytest.mark.parametrize("name", ["anchor_grid", "point_grid"])
def test_feature_map_count_and_rank_are_checked(name):
    entry = catalog.get(name)
    module = entry.build()
    feats = list(entry.example())
    with pytest.raises(ValueError, match="feats"):
        module(*feats[:-1])
    feats[0] = feats[0][0]
    with pytest.raises(ValueError, match=r"feats\[0\]"):
        module(*feats)


@pytest.mark.parametrize("name", NAMES)
def test_float64_and_int32_are_refused_with_a_type_error_that_says_how_to_cast(name):
    """numpy hands out float64 by default: never a silent change of results, never a torch error from deep inside."""
    entry = catalog.get(name)
    module = entry.build()
    wrong = {"float32": (torch.float64, r"\.float\(\)"), "int64": (torch.int32, r"\.long\(\)")}
    checked = 0
    for i, spec in enumerate(entry.inputs):
        if spec.dtype not in wrong or name in ("anchor_grid", "point_grid"):
            continue  # feature maps are read for their shapes only
        dtype, hint = wrong[spec.dtype]
        args = list(entry.example())
        args[i] = args[i].to(dtype)
        with pytest.raises(TypeError, match=rf"{_arg_pattern(entry, i)}: expected {spec.dtype}, got .*{hint}"):
            module(*args)
        checked += 1
    assert checked or name in ("anchor_grid", "point_grid")


_LABELLED = [n for n in NAMES if any(s.name == "gt_labels" for s in catalog.get(n).inputs)]


@pytest.mark.parametrize("name", _LABELLED)
@pytest.mark.parametrize("bad", [-5, "num_classes", 500])
def test_a_real_gt_label_outside_the_classes_is_refused(name, bad):
    """Label num_classes would come back as background on a positive, -5 or 500 as the label: refuse them."""
    entry = catalog.get(name)
    module = entry.build()
    names = [s.name for s in entry.inputs]
    args = list(entry.example(entry.test_sizes[1]))
    labels, mask = args[names.index("gt_labels")].clone(), args[names.index("gt_mask")]
    assert mask.any()
    classes = args[names.index("pred_scores")].shape[-1] if "pred_scores" in names else module.num_classes
    first = mask.nonzero()[0]
    labels[first[0], first[1]] = classes if bad == "num_classes" else bad
    args[names.index("gt_labels")] = labels
    with pytest.raises(ValueError, match=rf"gt_labels: real gts need a class in \[0, {classes}\)"):
        module(*args)
    # the same value on a padded row is fine: padding may hold anything
    if (~mask).any():
        pad = (~mask).nonzero()[0]
        labels = args[names.index("gt_labels")].clone()
        labels[first[0], first[1]] = 0
        labels[pad[0], pad[1]] = -5
        args[names.index("gt_labels")] = labels
        module(*args)
