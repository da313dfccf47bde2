"""The arena's data: procedurally drawn shapes on textured backgrounds, deterministic from a seed.

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``, width ``x2 - x1``: pixel ``i``
covers ``[i, i + 1)``, so a box is the tight hull of its shape's pixels. Images are ``(H, W)``; an image
is a ``(H, W, 3)`` uint8 array.

Shape shorthand: ``K`` images in a split, ``B`` images in a batch, ``M`` gts per image (padded).

Nothing is downloaded: every image is drawn in code from ``(seed, split, index)`` with NumPy's PCG64
generator, so image ``i`` of a split is the same on every machine and does not depend on how many
images the split has. Four classes of shapes, each a filled or outlined figure of one flat colour:

- ``disc`` (filled ellipse), ``box`` (filled rectangle), ``triangle`` (pointing up or down),
  ``ring`` (ellipse outline; at 5 px and below it looks like a disc, as small objects do).

Every image is one of four scene kinds (``index % 4``), so each split holds the cases where assigners
disagree in equal parts:

- ``mixed``: 2-5 objects of 8-48 px;
- ``small``: 6-12 objects of 3.5-12 px, many of them smaller than the finest stride (8);
- ``crowded``: 4-8 objects of 10-28 px packed around one point, boxes overlapping heavily;
- ``elongated``: 2-5 bars and thin shapes with aspect ratios from 3:1 to 8:1.

Overlaps are allowed, but every annotated object keeps at least ``MIN_VISIBLE`` of its pixels visible
(a placement that would hide more of an earlier object is redrawn). :func:`coco_dict` writes a split as
COCO-format annotations (``bbox`` = ``[x, y, w, h]``, ``area`` = ``w * h``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from exportable.batching import GtBatch, pad_gts

__all__ = [
    "CLASSES",
    "KINDS",
    "IMAGE_SIZE",
    "ArenaSplit",
    "draw_image",
    "make_split",
    "coco_dict",
    "write_coco",
    "to_batch",
]

CLASSES = ("disc", "box", "triangle", "ring")
KINDS = ("mixed", "small", "crowded", "elongated")
IMAGE_SIZE = 128  # (H, W) = (128, 128)
MIN_VISIBLE = 0.55  # an annotated object keeps at least this fraction of its pixels visible
_SPLIT_CODES = {"train": 0, "val": 1}
_MEAN, _STD = 0.5, 0.25  # image normalisation of to_batch


@dataclass
class ArenaSplit:
    """A split: images ``(K, H, W, 3)`` uint8, per image boxes ``(M_i, 4)`` and labels ``(M_i,)``."""

    name: str
    seed: int
    images: np.ndarray
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    kinds: list[str]

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def image_ids(self) -> list[int]:
        """COCO image ids: index + 1 (COCO ids start at 1)."""
        return list(range(1, len(self) + 1))


# ---------------------------------------------------------------------------------------------------
# Drawing one image


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background ``(H, W, 3)`` in [0, 1]: a base colour, two gratings, noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # (H, W) each
    img = np.empty((size, size, 3), np.float32)
    img[:] = rng.uniform(0.2, 0.8, 3)  # (H, W, 3) base colour
    for _ in range(2):
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(5.0, 32.0)
        phase = np.cos(angle) * xx + np.sin(angle) * yy  # (H, W)
        wave = np.sin(2 * np.pi * phase / period + rng.uniform(0, 2 * np.pi))  # (H, W)
        img += wave[..., None] * rng.uniform(0.03, 0.12, 3)  # (H, W, 3)
    img += rng.normal(0.0, 0.03, img.shape).astype(np.float32)  # (H, W, 3) pixel noise
    return img


def _shape_mask(cls: int, box: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask ``(H, W)`` of shape ``cls`` fitted to the float box ``(x1, y1, x2, y2)``."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    c = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    dx = (c[None, :] - cx) / (w / 2)  # (1, W) in [-1, 1] inside the box
    dy = (c[:, None] - cy) / (h / 2)  # (H, 1)
    if cls == 1:  # box
        return (np.abs(dx) <= 1) & (np.abs(dy) <= 1)  # (H, W)
    if cls == 2:  # triangle, apex up or down
        v = (dy + 1) / 2 if rng.random() < 0.5 else (1 - dy) / 2  # (H, 1) 0 at the apex, 1 at the base
        return (np.abs(dx) <= v) & (v >= 0) & (v <= 1)  # (H, W)
    r = dx**2 + dy**2  # (H, W)
    if cls == 0 or min(w, h) <= 5:  # disc (and a ring too small to show its hole)
        return r <= 1
    t = max(1.3, 0.22 * min(w, h))  # ring thickness in px
    inner = (dx * (w / 2) / (w / 2 - t)) ** 2 + (dy * (h / 2) / (h / 2 - t)) ** 2  # (H, W)
    return (r <= 1) & (inner > 1)


def _object_size(kind: str, rng: np.random.Generator) -> tuple[float, float]:
    """(w, h) in px for one object of a scene kind."""
    if kind == "elongated":
        long_side = rng.uniform(20, 72)
        short = long_side / rng.uniform(3, 8)
        return (long_side, short) if rng.random() < 0.5 else (short, long_side)
    lo, hi = {"mixed": (8, 48), "small": (3.5, 12), "crowded": (10, 28)}[kind]
    side = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # log-uniform side
    ratio = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))  # w / h
    return side * np.sqrt(ratio), side / np.sqrt(ratio)


def _count(kind: str, rng: np.random.Generator) -> int:
    lo, hi = {"mixed": (2, 5), "small": (6, 12), "crowded": (4, 8), "elongated": (2, 5)}[kind]
    return int(rng.integers(lo, hi + 1))


def _colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A flat colour far enough from the background's mean colour to be seen."""
    mean = background.reshape(-1, 3).mean(0)  # (3,)
    for _ in range(20):
        col = rng.uniform(0.0, 1.0, 3)
        if np.linalg.norm(col - mean) > 0.45:
            return col
    return 1.0 - mean  # the opposite colour always contrasts


def draw_image(seed: int, split: str, index: int, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``index`` of ``split``: ``(image (H, W, 3) uint8, boxes (M, 4) float32, labels (M,) int64)``.

    Deterministic from ``(seed, split, index)``; the scene kind is ``KINDS[index % 4]``.
    """
    if split not in _SPLIT_CODES:
        raise ValueError(f"split: expected one of {sorted(_SPLIT_CODES)}, got {split!r}")
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
    kind = KINDS[index % len(KINDS)]
    img = _background(rng, size)  # (H, W, 3)
    owner = np.full((size, size), -1, np.int64)  # (H, W) which object paints each pixel
    areas: list[int] = []
    boxes: list[list[float]] = []
    labels: list[int] = []
    centre = rng.uniform(0.3 * size, 0.7 * size, 2)  # crowded scenes pack objects around it
    for _ in range(_count(kind, rng)):
        cls = int(rng.integers(len(CLASSES)))
        for _attempt in range(12):
            w, h = _object_size(kind, rng)
            w, h = min(w, size - 2.0), min(h, size - 2.0)
            if kind == "crowded":
                cx, cy = centre + rng.normal(0.0, 0.45 * max(w, h), 2)
            else:
                cx, cy = rng.uniform(w / 2 + 1, size - w / 2 - 1), rng.uniform(h / 2 + 1, size - h / 2 - 1)
            cx = float(np.clip(cx, w / 2 + 1, size - w / 2 - 1))
            cy = float(np.clip(cy, h / 2 + 1, size - h / 2 - 1))
            mask = _shape_mask(cls, np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), size, rng)  # (H, W)
            if mask.sum() < 4:
                continue
            # would this hide too much of an object drawn earlier?
            n = len(areas)
            visible_now = np.bincount(owner[owner >= 0], minlength=n)  # (objects,) pixels still seen
            covered = np.bincount(owner[mask & (owner >= 0)], minlength=n)  # (objects,) pixels this would hide
            if np.all(visible_now - covered >= MIN_VISIBLE * np.asarray(areas)):
                break
        else:
            continue  # no placement found: leave the object out
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0])  # tight hull, pixel i = [i, i + 1)
        labels.append(cls)
        areas.append(int(mask.sum()))
        owner[mask] = len(areas) - 1
        col = _colour(rng, img)
        shade = col + rng.normal(0.0, 0.02, (int(mask.sum()), 3))  # (pixels, 3) a little texture
        img[mask] = shade
    image = (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)  # (H, W, 3)
    return image, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


def make_split(split: str, count: int, seed: int = 0, size: int = IMAGE_SIZE) -> ArenaSplit:
    """The first ``count`` images of ``split`` (``"train"`` or ``"val"``) for ``seed``."""
    images = np.empty((count, size, size, 3), np.uint8)  # (K, H, W, 3)
    boxes, labels = [], []
    for i in range(count):
        images[i], b, lab = draw_image(seed, split, i, size)
        boxes.append(b)
        labels.append(lab)
    kinds = [KINDS[i % len(KINDS)] for i in range(count)]
    return ArenaSplit(split, seed, images, boxes, labels, kinds)


# ---------------------------------------------------------------------------------------------------
# COCO format and batches


def coco_dict(data: ArenaSplit) -> dict:
    """The split as a COCO annotation dict (image ids from 1, category ids = class + 1)."""
    h, w = data.images.shape[1:3]
    images = [
        {"id": i + 1, "file_name": f"{data.name}_{i:05d}.png", "height": int(h), "width": int(w), "kind": data.kinds[i]}
        for i in range(len(data))
    ]
    anns = []
    for i, (boxes, labels) in enumerate(zip(data.boxes, data.labels)):
        for box, lab in zip(boxes, labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            anns.append({
                "id": len(anns) + 1, "image_id": i + 1, "category_id": int(lab) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })
    cats = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(CLASSES)]
    return {"info": {"description": f"assignlab arena, split {data.name}, seed {data.seed}"},
            "images": images, "annotations": anns, "categories": cats}


def write_coco(data: ArenaSplit, directory: str | Path = "build/arena") -> Path:
    """Write ``<directory>/<split>_seed<seed>.json`` (COCO format) and return its path."""
    path = Path(directory) / f"{data.name}_seed{data.seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco_dict(data)))
    return path


def to_batch(data: ArenaSplit, index: np.ndarray | list[int], flip: np.ndarray | None = None) -> tuple[Tensor, GtBatch]:
    """Images ``(B, 3, H, W)`` float32 (normalised) and a padded :class:`GtBatch` for ``index``.

    ``flip (B,)`` bool mirrors the chosen images left-right (boxes too): the training augmentation.
    """
    idx = np.asarray(index, np.int64)
    imgs = data.images[idx].astype(np.float32) / 255.0  # (B, H, W, 3)
    boxes = [data.boxes[i].copy() for i in idx]
    w = data.images.shape[2]
    if flip is not None:
        imgs[flip] = imgs[flip][:, :, ::-1]  # (B', H, W, 3)
        for j in np.nonzero(flip)[0]:
            boxes[j][:, [0, 2]] = w - boxes[j][:, [2, 0]]
    images = torch.from_numpy((imgs - _MEAN) / _STD).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)
    gts = pad_gts([torch.from_numpy(b) for b in boxes], [torch.from_numpy(data.labels[i]) for i in idx], min_rows=1)
    return images, gts
