"""The arena's detector: a small CNN, a 3-level FPN (strides 8, 16, 32) and one shared head.

Shape shorthand: ``B`` images, ``N`` priors (all levels concatenated, level-major, row-major inside a
level), ``C`` classes, ``L`` = 3 levels. Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32,
``x1 <= x2``; points are cell centres ``((i + 0.5) * stride)``.

One prior per location, as in the ATSS paper's comparison of RetinaNet and FCOS: the point is the cell
centre, the anchor a square of side ``anchor_scale * stride`` centred on it. Point-based assigners read
the points, anchor-based ones the anchors; every method regresses the same way, so the assigner (and
the loss its paper pairs with it) is the only difference between two runs.

Head outputs per prior (:class:`HeadOutput`):

- ``cls_logits (B, N, C)``: classification, sigmoid per class (no background column);
- ``box_deltas (B, N, 4)``: distances ``(l, t, r, b) = exp(delta) * stride`` from the point to the box
  sides (FCOS's parametrisation; at initialisation every predicted box is the prior's anchor);
- ``quality_logits (B, N)``: centre-ness (ATSS, O2F) or objectness (SimOTA); ignored by methods that
  have none (RetinaNet, TOOD).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from exportable.anchors import PointGenerator, featmap_sizes_for

__all__ = ["Priors", "HeadOutput", "TinyDetector", "make_priors", "decode_boxes"]

STRIDES = (8, 16, 32)


class Priors(NamedTuple):
    """One prior per location of every level: ``points (N, 2)``, ``strides (N,)``, ``level_ids (N,)``,
    ``anchors (N, 4)`` (a square of side ``anchor_scale * stride`` around each point)."""

    points: Float[Tensor, "N 2"]
    strides: Float[Tensor, " N"]
    level_ids: Int[Tensor, " N"]
    anchors: Float[Tensor, "N 4"]


class HeadOutput(NamedTuple):
    """Raw head outputs, priors of all levels concatenated: logits and log-distances."""

    cls_logits: Float[Tensor, "B N C"]
    box_deltas: Float[Tensor, "B N 4"]
    quality_logits: Float[Tensor, "B N"]


def make_priors(image_size: int = 128, strides=STRIDES, anchor_scale: float = 2.0) -> Priors:
    """Points, strides, level ids and one square anchor per location for a square image."""
    sizes = featmap_sizes_for((image_size, image_size), strides)
    pts, stride, level_ids = PointGenerator(strides, offset=0.5).grid_points(sizes)  # (N, 2), (N,), (N,)
    half = (anchor_scale * stride / 2).unsqueeze(1)  # (N, 1)
    anchors = torch.cat([pts - half, pts + half], dim=1)  # (N, 4)
    return Priors(pts, stride, level_ids, anchors)


def decode_boxes(priors: Priors, box_deltas: Float[Tensor, "B N 4"]) -> Float[Tensor, "B N 4"]:
    """``(l, t, r, b) = exp(delta) * stride`` around each point -> ``(x1, y1, x2, y2)`` boxes."""
    dist = box_deltas.clamp(max=6.0).exp() * priors.strides[:, None]  # (B, N, 4) pixels
    return torch.cat([priors.points - dist[..., :2], priors.points + dist[..., 2:]], dim=-1)  # (B, N, 4)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _head_conv(ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.GroupNorm(8, ch), nn.ReLU(inplace=True))


class TinyDetector(nn.Module):
    """Backbone (5 stride-2 stages) -> FPN on strides 8/16/32 -> one head shared by the levels.

    Args:
        num_classes: C.
        width: FPN and head channels.
        tower: conv layers in each head tower (classification; box + quality).
        prior_prob: initial sigmoid of every classification logit (RetinaNet's 0.01).
        quality_prior: initial sigmoid of the quality logit (FCOS's centre-ness 0.5; YOLOX's objectness 0.01).
    """

    def __init__(self, num_classes: int = 4, width: int = 64, tower: int = 1, prior_prob: float = 0.01,
                 quality_prior: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        chans = (16, 32, 64, 96, 128)
        stages, cin = [_conv(3, chans[0], 2)], chans[0]  # the 64 x 64 stage: one conv (the costliest map)
        for c in chans[1:]:
            stages.append(nn.Sequential(_conv(cin, c, 2), _conv(c, c)))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in chans[2:])
        self.smooth = nn.ModuleList(nn.Conv2d(width, width, 3, 1, 1) for _ in chans[2:])
        self.cls_tower = nn.Sequential(*[_head_conv(width) for _ in range(tower)])
        self.box_tower = nn.Sequential(*[_head_conv(width) for _ in range(tower)])
        self.cls_out = nn.Conv2d(width, num_classes, 3, 1, 1)
        self.box_out = nn.Conv2d(width, 4, 3, 1, 1)
        self.quality_out = nn.Conv2d(width, 1, 3, 1, 1)
        self.level_scale = nn.Parameter(torch.ones(len(STRIDES)))  # FCOS's learnable scale per level
        for conv, prob in ((self.cls_out, prior_prob), (self.quality_out, quality_prior)):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.constant_(conv.bias, -math.log((1 - prob) / prob))
        nn.init.normal_(self.box_out.weight, std=0.01)
        nn.init.zeros_(self.box_out.bias)  # exp(0) * stride: the predicted box is the anchor

    def forward(self, images: Float[Tensor, "B 3 H W"]) -> HeadOutput:
        feats, x = [], images
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        c3, c4, c5 = feats[2:]
        p5 = self.lateral[2](c5)  # (B, width, H/32, W/32)
        up = nn.functional.interpolate
        p4 = self.lateral[1](c4) + up(p5, scale_factor=2.0, mode="nearest")  # (B, width, H/16, W/16)
        p3 = self.lateral[0](c3) + up(p4, scale_factor=2.0, mode="nearest")  # (B, width, H/8, W/8)
        cls, box, quality = [], [], []
        b = images.shape[0]
        for k, p in enumerate((p3, p4, p5)):
            p = self.smooth[k](p)
            cf = self.cls_tower(p)
            bf = self.box_tower(p)
            cls.append(self.cls_out(cf).permute(0, 2, 3, 1).reshape(b, -1, self.num_classes))  # (B, H_l*W_l, C)
            box.append((self.box_out(bf) * self.level_scale[k]).permute(0, 2, 3, 1).reshape(b, -1, 4))  # (B, HW, 4)
            quality.append(self.quality_out(bf).reshape(b, -1))  # (B, H_l * W_l)
        return HeadOutput(torch.cat(cls, 1), torch.cat(box, 1), torch.cat(quality, 1))  # (B, N, C), (B, N, 4), (B, N)
