"""Padding ragged gts (M = 0 included), the masked extra row, and AssignResult's encodings."""

from __future__ import annotations

import pytest
import torch

from exportable.assigners.result import IGNORED, NEGATIVE, AssignResult, empty_result
from exportable.batching import check_gt_batch, ensure_gt_rows, pad_gts, unpad_gts


def test_pad_and_unpad_round_trip_with_an_empty_image():
    boxes = [torch.tensor([[0.0, 0, 10, 10], [5, 5, 8, 9]]), torch.zeros(0, 4), torch.tensor([[1.0, 2, 3, 4]])]
    labels = [torch.tensor([3, 1]), torch.zeros(0, dtype=torch.int64), torch.tensor([7])]
    batch = pad_gts(boxes, labels)
    assert batch.boxes.shape == (3, 2, 4) and batch.labels.dtype == torch.int64
    assert batch.mask.tolist() == [[True, True], [False, False], [True, False]]
    back_boxes, back_labels = unpad_gts(batch)
    for a, b in zip(back_boxes, boxes):
        assert torch.equal(a, b)
    for a, b in zip(back_labels, labels):
        assert torch.equal(a, b)


def test_no_gts_at_all():
    batch = pad_gts([torch.zeros(0, 4), torch.zeros(0, 4)])
    assert batch.boxes.shape == (2, 0, 4) and batch.mask.shape == (2, 0)
    batch = pad_gts([torch.zeros(0, 4)], min_rows=1)
    assert batch.boxes.shape == (1, 1, 4) and not batch.mask.any()


def test_ensure_gt_rows():
    b = pad_gts([torch.zeros(0, 4), torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)] * 2)
    boxes, labels, mask = ensure_gt_rows(*b)
    assert boxes.shape == (2, 1, 4) and labels.shape == (2, 1) and not mask.any()
    full = pad_gts([torch.tensor([[0.0, 0, 1, 1]])])
    same = ensure_gt_rows(*full)
    assert same.boxes is full.boxes  # free when M > 0 in eager
    assert ensure_gt_rows(full.boxes, None, full.mask).labels is None


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"boxes\[1\]"):
        pad_gts([torch.zeros(1, 4), torch.tensor([[0.0, 0, 1]])])
    with pytest.raises(ValueError, match=r"labels\[0\]"):
        pad_gts([torch.zeros(2, 4)], [torch.zeros(3, dtype=torch.int64)])
    with pytest.raises(ValueError, match="inverted"):
        pad_gts([torch.tensor([[5.0, 0, 1, 1]])])
    good = pad_gts([torch.tensor([[0.0, 0, 1, 1]])], [torch.tensor([2])], min_rows=2)
    bad_padding = good.boxes.clone()
    bad_padding[0, 1] = torch.tensor([9.0, 9, 1, 1])  # an inverted box in a PADDED row is fine
    check_gt_batch(bad_padding, good.labels, good.mask)
    bad_real = good.boxes.clone()
    bad_real[0, 0] = torch.tensor([9.0, 9, 1, 1])
    with pytest.raises(ValueError, match="gt_boxes.*inverted"):
        check_gt_batch(bad_real, good.labels, good.mask)
    with pytest.raises(TypeError, match="gt_mask"):
        check_gt_batch(good.boxes, good.labels, good.mask.int())
    with pytest.raises(ValueError, match="gt_boxes.*NaN"):
        check_gt_batch(torch.full((1, 2, 4), float("nan")), good.labels, good.mask)


def test_assign_result_encodings():
    gt_index = torch.tensor([[0, -1, -2, 2]])
    res = AssignResult(gt_index, torch.tensor([[4, 5, 5, 1]]), torch.zeros(1, 4, 4),
                       torch.zeros(1, 4), torch.tensor([[1.0, 0, 0, 0.5]]), torch.tensor([[1.0, 1, 0, 1]]))
    assert res.positive.tolist() == [[True, False, False, True]]
    assert res.negative.tolist() == [[False, True, False, False]]
    assert res.ignored.tolist() == [[False, False, True, False]]
    assert res.num_positives().tolist() == [2]
    mm = res.to_mmdet()
    assert mm.tolist() == [[1, 0, -1, 3]]  # mmdetection: 1-based, 0 negative, -1 ignored
    assert torch.equal(AssignResult.from_mmdet(mm), gt_index)
    dense = res.dense_scores(num_classes=5)
    assert dense.shape == (1, 4, 5)
    assert dense[0, 0].tolist() == [0, 0, 0, 0, 1.0] and dense[0, 3].tolist() == [0, 0.5, 0, 0, 0]
    assert dense[0, 1].sum() == 0 and dense[0, 2].sum() == 0
    assert NEGATIVE == -1 and IGNORED == -2


def test_empty_result():
    res = empty_result(2, 3, 80, like=torch.zeros(1))
    assert (res.gt_index == -1).all() and (res.labels == 80).all() and (res.weights == 1).all()
    assert res.boxes.shape == (2, 3, 4)


def test_from_gt_index_looks_up_boxes_and_labels_and_fills_the_encoding():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [5, 5, 20, 20]], [[1.0, 1, 2, 2], [0, 0, 0, 0]]])  # (2, 2, 4)
    labels = torch.tensor([[3, 7], [1, 0]])  # (2, 2)
    gt_index = torch.tensor([[1, -1, 0, -2], [0, 0, -1, -1]])  # (2, 4)
    overlaps = torch.tensor([[0.9, 0.3, 0.6, 0.45], [0.7, 0.8, 0.0, 0.1]])
    res = AssignResult.from_gt_index(gt_index, boxes, labels, 80, overlaps=overlaps)
    assert res.labels.tolist() == [[7, 80, 3, 80], [1, 1, 80, 80]]
    assert res.boxes[0, 0].tolist() == [5, 5, 20, 20] and res.boxes[0, 2].tolist() == [0, 0, 10, 10]
    assert res.boxes[0, 1].tolist() == [0, 0, 0, 0] and res.boxes[0, 3].tolist() == [0, 0, 0, 0]
    assert torch.equal(res.overlaps, overlaps)  # as given (MaxIoU keeps every anchor's best IoU)
    assert res.target_scores.tolist() == [[1, 0, 1, 0], [1, 1, 0, 0]]
    assert res.weights.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    soft = AssignResult.from_gt_index(gt_index, boxes, labels, 80, overlaps=overlaps, target_scores=overlaps,
                                      weights=torch.full_like(overlaps, 0.4))
    assert torch.equal(soft.target_scores, torch.where(gt_index >= 0, overlaps, 0.0))  # 0 off positives
    assert soft.weights.eq(0.4).all()


def test_from_gt_index_fills_non_positives_with_plus_zero_boxes_and_the_background_class():
    # out-of-image gts (negative coordinates) must not leak a -0.0 or a gt box into non-positive rows
    boxes = torch.tensor([[[-8.0, -4.0, -1.0, -2.0]]])  # (1, 1, 4)
    res = AssignResult.from_gt_index(torch.tensor([[0, -1, -2]]), boxes, torch.tensor([[5]]), 9,
                                     overlaps=torch.zeros(1, 3))
    assert res.boxes[0, 0].tolist() == [-8.0, -4.0, -1.0, -2.0] and res.labels.tolist() == [[5, 9, 9]]
    assert not torch.signbit(res.boxes[0, 1:]).any() and (res.boxes[0, 1:] == 0).all()
