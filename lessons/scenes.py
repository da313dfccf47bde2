"""Scenes to assign labels in: one real photo, one toy image, and seeded COCO-like random batches.

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``, with width ``x2 - x1``
(no "+1"). Images are ``(H, W)``: a scene's ``image`` is a ``(H, W, 3)`` uint8 array, and a
box may touch the right border (``x2 == W``) because pixel ``i`` covers ``[i, i + 1)``.

Shape shorthand: B images, M gts per image, N priors (anchors or points), C classes.

- :func:`default_scene` -- the photo of Grace Hopper that matplotlib ships in its sample data,
  with six hand-labelled objects of very different sizes and shapes (a person, a hat, a face,
  a tie, medal ribbons, a name tag).
- :func:`toy_scene` -- a 64 x 48 image with two overlapping gts, small enough to compute every
  IoU by hand.
- :func:`random_scene`, :func:`random_batch`, :func:`make_workload_batch` -- the seeded scenes of
  ``docs/workloads.md`` (the benchmark workloads), drawn with a ``torch.Generator`` so that a seed gives
  the same boxes on every run and every machine.
- :func:`random_predictions` -- seeded predictions for the assigners that read them (SimOTA,
  TaskAligned, O2F).

Batches of gts come padded, as everywhere in the package: ``gt_boxes (B, M, 4)``,
``gt_labels (B, M)`` int64, ``gt_mask (B, M)`` bool, and ``image_sizes (B, 2)`` int64 holding
``(H, W)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Bool, Float, Int64
from torch import Tensor

__all__ = [
    "GRACE_HOPPER_BOXES",
    "GRACE_HOPPER_CLASSES",
    "WORKLOADS",
    "make_point_workload_inputs",
    "GtBatch",
    "Scene",
    "Workload",
    "default_scene",
    "grid_points",
    "load_photo",
    "make_workload_batch",
    "make_workload_predictions",
    "random_batch",
    "random_predictions",
    "random_scene",
    "toy_scene",
]


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


class GtBatch(NamedTuple):
    """A padded batch of ground truth, in the package's names.

    ``gt_boxes (B, M, 4)`` float32 ``(x1, y1, x2, y2)`` pixels, ``gt_labels (B, M)`` int64,
    ``gt_mask (B, M)`` bool (True where a row is a real gt), ``image_sizes (B, 2)`` int64 ``(H, W)``.
    Unpacks as a tuple: ``gt_boxes, gt_labels, gt_mask, image_sizes = batch``.
    """

    gt_boxes: Float[Tensor, "B M 4"]
    gt_labels: Int64[Tensor, "B M"]
    gt_mask: Bool[Tensor, "B M"]
    image_sizes: Int64[Tensor, "B 2"]

    def to(self, device: torch.device | str) -> GtBatch:
        """The same batch on another device."""
        return GtBatch(*(t.to(device) for t in self))


@dataclass
class Scene:
    """One image and its ground truth.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB array.
        boxes: ``(M, 4)`` float32 tensor, ``(x1, y1, x2, y2)`` absolute pixels.
        labels: ``(M,)`` int64 tensor, indices into ``class_names``.
        class_names: the name of every class index.
        name: a short name for titles.
    """

    image: np.ndarray
    boxes: Float[Tensor, "M 4"]
    labels: Int64[Tensor, " M"]
    class_names: list[str]
    name: str = "scene"

    @property
    def hw(self) -> tuple[int, int]:
        """``(H, W)`` of the image in pixels."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def num_gts(self) -> int:
        """M, the number of boxes."""
        return int(self.boxes.shape[0])

    @property
    def num_classes(self) -> int:
        """C, the number of class names."""
        return len(self.class_names)

    def names(self) -> list[str]:
        """The class name of every box, in box order."""
        return [self.class_names[int(k)] for k in self.labels]

    def as_batch(self) -> GtBatch:
        """This scene as a padded batch of one image: ``(1, M, 4)``, ``(1, M)``, ``(1, M)``, ``(1, 2)``."""
        m = self.num_gts
        return GtBatch(
            gt_boxes=self.boxes.reshape(1, m, 4).clone(),  # (1, M, 4)
            gt_labels=self.labels.reshape(1, m).clone(),  # (1, M)
            gt_mask=torch.ones(1, m, dtype=torch.bool),  # (1, M)
            image_sizes=torch.tensor([self.hw], dtype=torch.int64),  # (1, 2)
        )


# --------------------------------------------------------------------------------------------
# The real photo
# --------------------------------------------------------------------------------------------

PHOTO_FILE = "grace_hopper.jpg"
"""The photo in matplotlib's sample data (``matplotlib.cbook.get_sample_data``): 512 x 600 px."""

GRACE_HOPPER_CLASSES: list[str] = ["person", "hat", "face", "tie", "ribbons", "name tag"]

# Hand-labelled on the 600 x 512 (H x W) photo, read off zoomed crops with a 2-5 px grid.
# One row per object: (x1, y1, x2, y2) pixels, then the class index into GRACE_HOPPER_CLASSES.
GRACE_HOPPER_BOXES: list[tuple[float, float, float, float, int]] = [
    # The whole visible person: crown of the cap (y 22) to the bottom edge, left shoulder
    # (x 11 at the bottom) to the right edge, where the shoulder leaves the frame.
    (11.0, 22.0, 512.0, 600.0, 0),
    # The navy officer's cap with its white crown and gold badge, brim included.
    (147.0, 22.0, 371.0, 170.0, 1),
    # The face from below the cap's brim to the chin, ear to ear.
    (162.0, 136.0, 372.0, 336.0, 2),
    # The black tie knot between the two points of the white collar.
    (216.0, 409.0, 300.0, 450.0, 3),
    # The medal ribbon bars on the right breast (her left), top single ribbon included.
    (323.0, 488.0, 451.0, 526.0, 4),
    # The grey name tag on the left breast, "COMO HOPPER".
    (79.0, 484.0, 168.0, 518.0, 5),
]


@functools.lru_cache(maxsize=1)
def _read_photo() -> np.ndarray:
    from matplotlib import cbook
    from matplotlib import image as mpimg

    with cbook.get_sample_data(PHOTO_FILE) as f:
        image = np.asarray(mpimg.imread(f, format="jpg"))
    if image.dtype != np.uint8:  # some readers return floats in [0, 1]
        image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    image = image[..., :3]
    image.setflags(write=False)
    return image


def load_photo() -> np.ndarray:
    """The photo of Grace Hopper from matplotlib's sample data, ``(600, 512, 3)`` uint8 RGB.

    A fresh copy on every call (the decoded photo is cached), so a learner may draw on it.
    """
    return _read_photo().copy()


def default_scene() -> Scene:
    """The real photo with its six hand-labelled gts (see ``GRACE_HOPPER_BOXES``).

    The objects nest and overlap on purpose: the person contains every other box, and the cap
    and the face overlap, so one anchor can be a fair match for several gts. Sizes range from
    the 501 x 578 person down to the 84 x 41 tie knot; the ribbons and the name tag are wide
    (aspect w/h about 3.4 and 2.6).
    """
    rows = torch.tensor([r[:4] for r in GRACE_HOPPER_BOXES], dtype=torch.float32)  # (M, 4)
    labels = torch.tensor([r[4] for r in GRACE_HOPPER_BOXES], dtype=torch.int64)  # (M,)
    return Scene(
        image=load_photo(),
        boxes=rows,
        labels=labels,
        class_names=list(GRACE_HOPPER_CLASSES),
        name="grace_hopper",
    )


# --------------------------------------------------------------------------------------------
# The toy scene
# --------------------------------------------------------------------------------------------

TOY_HW = (48, 64)
TOY_BOXES: list[tuple[float, float, float, float, int]] = [
    (4.0, 8.0, 28.0, 40.0, 0),  # a cat: 24 x 32 = 768 px^2
    (20.0, 16.0, 52.0, 40.0, 1),  # a dog: 32 x 24 = 768 px^2
]
TOY_CLASSES = ["cat", "dog"]


def toy_scene() -> Scene:
    """A 48 x 64 (H x W) image with two gts, for computing by hand.

    - gt 0, ``cat``: ``(4, 8, 28, 40)``, 24 x 32 px, area 768.
    - gt 1, ``dog``: ``(20, 16, 52, 40)``, 32 x 24 px, area 768.
    - They overlap in ``(20, 16, 28, 40)``: 8 x 24 = 192 px, so IoU = 192 / (768 + 768 - 192) = 1/7.

    At stride 8 the image is a 6 x 8 grid of cells, 48 cells in all. The image is a pale
    background with each gt painted in a pale tint (the overlap mixes both); it is the same on
    every call.
    """
    h, w = TOY_HW
    image = np.full((h, w, 3), 245, dtype=np.uint8)
    # Pale tints of the two gts' colours in lessons.draw (gt 0 blue, gt 1 orange).
    tints = [np.array([170, 200, 245]), np.array([250, 210, 160])]
    layer = np.zeros((h, w, 3), dtype=np.float64)
    count = np.zeros((h, w, 1), dtype=np.float64)
    for (x1, y1, x2, y2, _), tint in zip(TOY_BOXES, tints):
        layer[int(y1) : int(y2), int(x1) : int(x2)] += tint
        count[int(y1) : int(y2), int(x1) : int(x2)] += 1
    painted = count[..., 0] > 0
    image[painted] = np.round(layer[painted] / count[painted]).astype(np.uint8)
    boxes = torch.tensor([b[:4] for b in TOY_BOXES], dtype=torch.float32)  # (2, 4)
    labels = torch.tensor([b[4] for b in TOY_BOXES], dtype=torch.int64)  # (2,)
    return Scene(image=image, boxes=boxes, labels=labels, class_names=list(TOY_CLASSES), name="toy")


# --------------------------------------------------------------------------------------------
# Seeded COCO-like scenes (docs/workloads.md)
# --------------------------------------------------------------------------------------------

MIN_SIDE = 8.0  # px, smallest box side (geometric mean of width and height)
MAX_SIDE_FRACTION = 0.8  # largest side = 0.8 * min(H, W)
MAX_ASPECT = 3.0  # aspect w/h in [1/3, 3]


def _sample_boxes(
    generator: torch.Generator, batch: int, h: int, w: int, m: int, num_classes: int, clip: bool
) -> tuple[Tensor, Tensor]:
    """Draw ``(B, M, 4)`` boxes and ``(B, M)`` labels, the docs/workloads.md way.

    Steps (one ``torch.rand`` call, then one ``torch.randint`` call, so the stream is pinned):
      1. ``u = rand(B, M, 4)`` in float64: columns are side, aspect, centre x, centre y.
      2. side ``s`` log-uniform in ``[8, 0.8 * min(H, W)]`` (``s = sqrt(width * height)``).
      3. aspect ``a = width / height`` log-uniform in ``[1/3, 3]``; ``width = s * sqrt(a)``,
         ``height = s / sqrt(a)``.
      4. centre uniform in the image: ``cx = u * W``, ``cy = u * H``.
      5. clip to ``[0, W] x [0, H]`` (unless ``clip=False``), then cast to float32.
      6. labels uniform over ``num_classes`` classes.
    """
    if m == 0:
        return torch.zeros(batch, 0, 4), torch.zeros(batch, 0, dtype=torch.int64)
    max_side = MAX_SIDE_FRACTION * min(h, w)
    if max_side < MIN_SIDE:
        raise ValueError(f"image {h}x{w} is too small: 0.8 * min(H, W) = {max_side} < {MIN_SIDE} px")
    u = torch.rand((batch, m, 4), generator=generator, dtype=torch.float64)  # (B, M, 4)
    log_lo, log_hi = math.log(MIN_SIDE), math.log(max_side)
    side = torch.exp(log_lo + u[..., 0] * (log_hi - log_lo))  # (B, M)
    log_a = math.log(MAX_ASPECT)
    aspect = torch.exp(-log_a + u[..., 1] * (2.0 * log_a))  # (B, M), w / h
    bw = side * aspect.sqrt()  # (B, M)
    bh = side / aspect.sqrt()  # (B, M)
    cx = u[..., 2] * w  # (B, M)
    cy = u[..., 3] * h  # (B, M)
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)  # (B, M, 4)
    if clip:
        boxes[..., 0::2] = boxes[..., 0::2].clamp(0.0, float(w))
        boxes[..., 1::2] = boxes[..., 1::2].clamp(0.0, float(h))
    labels = torch.randint(num_classes, (batch, m), generator=generator, dtype=torch.int64)  # (B, M)
    return boxes.to(torch.float32), labels


def random_scene(h: int, w: int, m: int, num_classes: int = 80, seed: int = 0, *, clip: bool = True) -> Scene:
    """A seeded COCO-like scene of ``m`` boxes on a blank ``(h, w)`` image.

    The boxes are those of image 0 of ``random_batch((h, w, 1, m, num_classes), seed)``; see
    :func:`random_batch` for the rules. The image is plain light grey (there is nothing to see
    but the boxes); class names are ``"class 0"``, ``"class 1"``, ...
    """
    g = torch.Generator().manual_seed(seed)
    boxes, labels = _sample_boxes(g, 1, h, w, m, num_classes, clip)
    return Scene(
        image=np.full((h, w, 3), 235, dtype=np.uint8),
        boxes=boxes[0],  # (M, 4)
        labels=labels[0],  # (M,)
        class_names=[f"class {k}" for k in range(num_classes)],
        name=f"random {h}x{w} m={m} seed={seed}",
    )


# --------------------------------------------------------------------------------------------
# Named workloads
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """A benchmark workload of docs/workloads.md, as plain data.

    ``priors`` says how to build the priors, in the argument names of ``exportable.anchors``:
    ``kind`` is ``"anchors"`` or ``"points"``; anchors add ``strides``, ``ratios`` (h/w) and either
    ``scales`` with ``base_sizes`` or ``octave_base_scale`` with ``scales_per_octave``; every kind
    states ``num_priors``, the count docs/workloads.md gives. ``extra`` holds anything else the
    workload fixes (the proposal settings of ``proposals``). Each workload has its own dicts;
    treat them as read-only.
    """

    name: str
    h: int
    w: int
    batch: int
    m: int
    num_classes: int
    priors: Mapping[str, Any]
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def hw(self) -> tuple[int, int]:
        """``(H, W)`` of every image of the workload."""
        return self.h, self.w

    def featmap_sizes(self) -> list[tuple[int, int]]:
        """``(ceil(H / s), ceil(W / s))`` per stride: the feature-map sizes of an FPN on this input."""
        return [(math.ceil(self.h / s), math.ceil(self.w / s)) for s in self.priors["strides"]]

    def priors_per_location(self) -> int:
        """Anchors per location (ratios x scales); 1 for points."""
        p = self.priors
        if p["kind"] == "points":
            return 1
        scales = p["scales"] if "scales" in p else range(p["scales_per_octave"])
        return len(p["ratios"]) * len(scales)

    def generator_kwargs(self) -> dict[str, Any]:
        """The prior settings as keyword arguments of ``exportable.anchors.AnchorGenerator`` (anchors)
        or ``PointGenerator`` (points): ``priors`` without ``kind`` and ``num_priors``."""
        return {k: v for k, v in self.priors.items() if k not in ("kind", "num_priors")}

    def count_priors(self) -> int:
        """N, computed from the feature-map sizes (should equal ``priors["num_priors"]``)."""
        return sum(fh * fw for fh, fw in self.featmap_sizes()) * self.priors_per_location()


_RETINA_ANCHORS = {
    "kind": "anchors",
    "strides": (8, 16, 32, 64, 128),
    "ratios": (0.5, 1.0, 2.0),
    "octave_base_scale": 4,
    "scales_per_octave": 3,
    "num_priors": 182_403,
}
_ATSS_ANCHORS = {
    "kind": "anchors",
    "strides": (8, 16, 32, 64, 128),
    "ratios": (1.0,),
    "octave_base_scale": 8,  # one square anchor of side 8 * stride
    "scales_per_octave": 1,
    "num_priors": 20_267,
}
_RPN_ANCHORS = {
    "kind": "anchors",
    "strides": (16,),
    "ratios": (0.5, 1.0, 2.0),
    "scales": (8, 16, 32),
    "base_sizes": (16,),
    "num_priors": 21_546,  # 38 x 63 x 9
}
_YOLOX_POINTS = {
    "kind": "points",
    "strides": (8, 16, 32),
    "offset": 0.5,  # cell centres
    "num_priors": 8_400,
}

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("retina-m20", 800, 1216, 8, 20, 80, dict(_RETINA_ANCHORS)),
        Workload("retina-m100", 800, 1216, 8, 100, 80, dict(_RETINA_ANCHORS)),
        Workload("atss-m20", 800, 1216, 8, 20, 80, dict(_ATSS_ANCHORS)),
        Workload("atss-m100", 800, 1216, 8, 100, 80, dict(_ATSS_ANCHORS)),
        Workload("rpn-m20", 600, 1000, 8, 20, 20, dict(_RPN_ANCHORS)),
        # No gts: random objectness scores and deltas on the rpn-m20 anchors go through the
        # proposal creator (pre-NMS top 12,000, NMS at IoU 0.7, keep 2,000).
        Workload(
            "proposals",
            600,
            1000,
            8,
            0,
            0,
            dict(_RPN_ANCHORS),
            extra={"pre_nms_top_n": 12_000, "nms_iou_threshold": 0.7, "post_nms_top_n": 2_000},
        ),
        Workload("yolox-m20", 640, 640, 16, 20, 80, dict(_YOLOX_POINTS)),
        Workload("yolox-m100", 640, 640, 16, 100, 80, dict(_YOLOX_POINTS)),
    ]
}
"""Every workload of docs/workloads.md by name."""


def _as_workload(spec: Workload | str | Mapping[str, Any] | Sequence[int]) -> Workload:
    if isinstance(spec, Workload):
        return spec
    if isinstance(spec, str):
        if spec not in WORKLOADS:
            raise KeyError(f"unknown workload {spec!r}; known: {', '.join(WORKLOADS)}")
        return WORKLOADS[spec]
    if isinstance(spec, Mapping):
        args = dict(spec)
    else:
        keys = ("h", "w", "batch", "m", "num_classes")
        if not 4 <= len(spec) <= 5:
            raise ValueError(f"expected (h, w, batch, m[, num_classes]), got {spec!r}")
        args = dict(zip(keys, spec))
    args.setdefault("num_classes", 80)
    return Workload(
        name="custom",
        h=int(args["h"]),
        w=int(args["w"]),
        batch=int(args["batch"]),
        m=int(args["m"]),
        num_classes=int(args["num_classes"]),
        priors={},
    )


def random_batch(
    spec: Workload | str | Mapping[str, Any] | Sequence[int],
    seed: int = 0,
    *,
    batch: int | None = None,
    clip: bool = True,
) -> GtBatch:
    """A seeded batch of COCO-like scenes, padded: every image has exactly M boxes.

    Args:
        spec: a :class:`Workload`, a workload name (``"retina-m20"``), a mapping with keys
            ``h, w, batch, m`` (and optionally ``num_classes``, default 80), or a tuple
            ``(h, w, batch, m[, num_classes])``.
        seed: seeds a fresh ``torch.Generator``; the same seed gives the same batch on every run.
        batch: overrides the workload's B. Image ``i`` does not depend on B.
        clip: clip boxes to the image (the rule). ``clip=False`` shows the drawn boxes before
            clipping, for checking the size and aspect rules.

    Rules (docs/workloads.md): per box, side ``sqrt(w * h)`` log-uniform in ``[8, 0.8 * min(H, W)]`` px,
    aspect ``w / h`` log-uniform in ``[1/3, 3]``, centre uniform in the image, clipped to the image;
    labels uniform over C classes. Draw order, image after image from one generator:
    ``rand(1, M, 4)`` (float64; side, aspect, centre x, centre y) then ``randint(C, (1, M))``.

    Returns:
        ``GtBatch(gt_boxes (B, M, 4) float32, gt_labels (B, M) int64, gt_mask (B, M) bool all True,
        image_sizes (B, 2) int64 (H, W))``.
    """
    wl = _as_workload(spec)
    b = wl.batch if batch is None else int(batch)
    g = torch.Generator().manual_seed(seed)
    # Images are drawn one after the other from the same stream, so image i is the same for
    # every B >= i + 1 (a smaller batch is a prefix of a larger one).
    per_image = [_sample_boxes(g, 1, wl.h, wl.w, wl.m, wl.num_classes, clip) for _ in range(b)]
    if b == 0:
        boxes = torch.zeros(0, wl.m, 4)
        labels = torch.zeros(0, wl.m, dtype=torch.int64)
    else:
        boxes = torch.cat([p[0] for p in per_image])  # (B, M, 4)
        labels = torch.cat([p[1] for p in per_image])  # (B, M)
    return GtBatch(
        gt_boxes=boxes,
        gt_labels=labels,
        gt_mask=torch.ones(b, wl.m, dtype=torch.bool),  # (B, M)
        image_sizes=torch.tensor([[wl.h, wl.w]] * b, dtype=torch.int64).reshape(b, 2),  # (B, 2)
    )


def make_workload_batch(name: str, seed: int = 0, batch: int | None = None) -> GtBatch:
    """The gts of the named workload: ``random_batch(WORKLOADS[name], seed, batch=batch)``."""
    return random_batch(_as_workload(name), seed, batch=batch)


# --------------------------------------------------------------------------------------------
# Points and seeded predictions
# --------------------------------------------------------------------------------------------


def grid_points(
    h: int, w: int, strides: Sequence[int], offset: float = 0.5
) -> tuple[Float[Tensor, "N 2"], Float[Tensor, " N"], Int64[Tensor, " N"]]:
    """Point priors of an FPN on an ``(h, w)`` image: the reference for ``exportable.anchors``.

    Level ``l`` of stride ``s`` is a ``ceil(h / s) x ceil(w / s)`` grid; its point at column ``x``,
    row ``y`` is ``((x + offset) * s, (y + offset) * s)`` -- the cell centre for ``offset=0.5``.
    Points are ordered level by level, row-major within a level (``y * W + x``).

    Returns:
        ``points (N, 2)`` float32 ``(x, y)`` pixels, ``strides (N,)`` float32,
        ``level_ids (N,)`` int64.
    """
    points, point_strides, level_ids = [], [], []
    for level, s in enumerate(strides):
        fh, fw = math.ceil(h / s), math.ceil(w / s)
        ys, xs = torch.meshgrid(torch.arange(fh), torch.arange(fw), indexing="ij")  # (fh, fw) each
        xy = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1).to(torch.float32)  # (fh*fw, 2)
        points.append((xy + offset) * s)
        point_strides.append(torch.full((fh * fw,), float(s)))
        level_ids.append(torch.full((fh * fw,), level, dtype=torch.int64))
    return torch.cat(points), torch.cat(point_strides), torch.cat(level_ids)


def random_predictions(
    points: Float[Tensor, "N 2"],
    strides: Float[Tensor, " N"],
    batch: int,
    num_classes: int,
    seed: int = 0,
) -> tuple[Float[Tensor, "B N C"], Float[Tensor, "B N 4"]]:
    """Seeded predictions for the assigners that read them (docs/workloads.md).

    - ``pred_scores (B, N, C)``: uniform in ``(0, 1)`` (exactly 0 is moved to ``2**-24``, so logs
      are finite); they stand for probabilities, never logits.
    - ``pred_boxes (B, N, 4)``: each point's own square of side ``4 * stride``, every coordinate
      jittered by ``U(-stride, stride)``. The jitter keeps ``x1 < x2`` (width at least
      ``2 * stride``); boxes are not clipped to the image.

    Draw order: one ``rand(B, N, C)`` then one ``rand(B, N, 4)`` from ``torch.Generator`` seeded
    with ``seed``. Returned on the device and in the float dtype of ``points``.
    """
    g = torch.Generator().manual_seed(seed)
    n = points.shape[0]
    pts = points.detach().cpu().to(torch.float32)  # (N, 2)
    s = strides.detach().cpu().to(torch.float32).reshape(n, 1)  # (N, 1)
    scores = torch.rand((batch, n, num_classes), generator=g).clamp_(min=2.0**-24)  # (B, N, C)
    jitter = torch.rand((batch, n, 4), generator=g) * 2.0 - 1.0  # (B, N, 4) in [-1, 1)
    square = torch.cat([pts - 2.0 * s, pts + 2.0 * s], dim=-1)  # (N, 4)
    boxes = square.unsqueeze(0) + jitter * s.unsqueeze(0)  # (B, N, 4)
    dtype = points.dtype if points.dtype.is_floating_point else torch.float32
    return scores.to(points.device, dtype), boxes.to(points.device, dtype)


def make_workload_predictions(
    name: str, seed: int = 0, batch: int | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Points and seeded predictions of a point workload (``yolox-m20``, ``yolox-m100``).

    Returns ``points (N, 2)``, ``strides (N,)``, ``pred_scores (B, N, C)``, ``pred_boxes (B, N, 4)``,
    with the points from :func:`grid_points` and the predictions from :func:`random_predictions`.
    """
    wl = _as_workload(name)
    if wl.priors.get("kind") != "points":
        raise ValueError(f"workload {wl.name!r} has {wl.priors.get('kind')!r} priors, not points")
    b = wl.batch if batch is None else int(batch)
    points, strides, _ = grid_points(wl.h, wl.w, wl.priors["strides"], wl.priors.get("offset", 0.5))
    scores, boxes = random_predictions(points, strides, b, wl.num_classes, seed)
    return points, strides, scores, boxes


def make_point_workload_inputs(workload: str, seed: int = 0) -> tuple[Tensor, ...]:
    """The common point-assigner inputs of ``yolox-m20`` / ``yolox-m100`` (or ``name@B``), seeded.

    Returns ``points (N, 2)``, ``strides (N,)``, ``pred_scores (B, N, C)``, ``pred_boxes (B, N, 4)``,
    ``gt_boxes (B, M, 4)``, ``gt_labels (B, M)``, ``gt_mask (B, M)``: the forward order of SimOTA, TaskAligned
    and O2F (:func:`make_workload_predictions` + :func:`make_workload_batch`).
    """
    name, _, batch = workload.partition("@")
    b = int(batch) if batch else None
    if not name.startswith("yolox-"):
        raise ValueError(f"workload: the point assigners run on yolox-m20 / yolox-m100, got {workload!r}")
    points, strides, scores, boxes = make_workload_predictions(name, seed=seed, batch=b)
    gts = make_workload_batch(name, seed=seed, batch=b)
    return points, strides, scores, boxes, gts.gt_boxes, gts.gt_labels, gts.gt_mask
