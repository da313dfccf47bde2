"""The main job runs end to end on a small setting: figures, graphs, summary, exit status."""

from __future__ import annotations

import json

import pytest

from lessons import demo


@pytest.mark.onnx
def test_demo_end_to_end(tmp_path, capsys):
    rc = demo.main(["--out", str(tmp_path), "--only", "max_iou", "nms", "anchor_grid"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "58,356 RetinaNet anchors" in out  # (600, 512) photo padded to (608, 512)
    assert "3 of 3 components agree" in out
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert [r["name"] for r in rows] == ["max_iou", "nms", "anchor_grid"]
    assert all(r["verdict"] in ("exact", "close") for r in rows)
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["anchor_grid.onnx", "max_iou.onnx", "nms.onnx"]
    figures = sorted((tmp_path / "figures").glob("*.png"))
    assert len(figures) == 4 and all(p.stat().st_size > 10_000 for p in figures)


def test_every_catalog_entry_has_photo_inputs_matching_its_contract():
    from exportable import catalog

    ctx = demo.build_context(demo.default_scene())
    for name in catalog.names():
        entry = catalog.get(name)
        args = demo.SCENE_INPUTS[name](ctx)
        assert len(args) == len(entry.inputs), name
        for arg, spec in zip(args, entry.inputs):
            assert arg.dim() == len(spec.dims) and str(arg.dtype).removeprefix("torch.") == spec.dtype, (name, spec)


def test_cli_usage():
    from lessons.__main__ import main

    assert main([]) == 2
