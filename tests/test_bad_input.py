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
