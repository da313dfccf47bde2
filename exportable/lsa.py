"""Linear sum assignment (the matching DETR's Hungarian step solves), batched: scipy in eager, a Loop in ONNX.

Shape shorthand: ``B`` images, ``Q`` queries (the cost matrix's rows), ``M`` gts per image (its columns,
padded; ``gt_mask (B, M)`` marks the real ones), ``C1 = Q + M + 1`` the solver's columns (below).

The problem, per image: choose ``min(Q, M_real)`` (query, gt) pairs, no query and no gt twice, with the
smallest total cost. :func:`linear_sum_assignment` returns ``gt_index (B, Q)`` int64: each query's gt,
-1 for an unmatched query. Costs must be finite (NaN or inf on a real gt is a ``ValueError`` in eager; scipy
itself would stop with "matrix contains invalid numeric entries" or "cost matrix is infeasible").

Two solvers, one answer:

- ``"scipy"``: ``scipy.optimize.linear_sum_assignment`` image by image (what mmdetection, DETR and every
  peer run), on the CPU, in float64. The eager default.
- ``"graph"``: a batched shortest-augmenting-path solver (Kuhn's Hungarian method in the Jonker-Volgenant
  form, as in scipy), written with ``torch``'s ``while_loop``, which the dynamo exporter turns into ONNX
  ``Loop``; the exported graph always uses it. Exact, in float64: it reaches scipy's optimal total on every
  tested problem (``tests/test_hungarian.py``: over a thousand, with tied integer costs, both rectangular shapes
  and padding). Where several assignments share the optimal total, the two solvers may pick different
  ones; on tie-free costs they agree pair for pair.

How the graph solver works (steps as in ``docs/algorithms.md`` §17.3):

1. Rows are the image's real gts, inserted one at a time in gt order; columns are the ``Q`` queries plus
   ``M`` dummy columns of cost 0, of which the first ``max(0, M_real - Q)`` are open: with more gts than
   queries the surplus gts end on a dummy (unmatched), which leaves the optimum of the real pairs
   unchanged; with fewer, no dummy is open and every gt gets a query. Column 0 is the search's root.
2. Inserting a row is a Dijkstra search over reduced costs ``cost - u(row) - v(col)``: each step takes the
   closest open column; if a row already sits there, the search continues from that row; a free column
   ends the search. The potentials ``u, v`` move by the step's distance so reduced costs stay >= 0.
3. The path found is flipped back column by column (``way``): each column takes the row of its
   predecessor, and the new row lands on the path's first column.

Every image runs its own steps in the same loop iteration (``phase`` says which), so the loop ends when
the slowest image has placed all its gts: about ``2 * M`` iterations on DETR-like costs, never more than
``M * (M + 1)`` (a row's search and its path each take at most as many steps as rows placed so far). Row
potentials live on the column their row occupies (``u[j]`` is the potential of the row at column ``j``),
so no scatter is needed. NaN costs cannot raise in a graph: the iteration cap still ends the loop, the
answer is then unspecified.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch._higher_order_ops.while_loop import while_loop

from exportable._checks import check_bool, check_dtype, check_shape, check_tensor, checks_enabled, exporting

__all__ = ["linear_sum_assignment", "Solver"]

Solver = Literal["auto", "scipy", "graph"]

SEARCH, FLIP, DONE = 0, 1, 2  # an image's phase: Dijkstra steps (2), flipping the path (3), all gts placed


def linear_sum_assignment(
    cost: Float[Tensor, "B Q M"],
    gt_mask: Bool[Tensor, "B M"],
    *,
    solver: Solver = "auto",
) -> Int[Tensor, "B Q"]:
    """The minimum-cost one-to-one matching of queries and real gts, per image.

    Args:
        cost: ``(B, Q, M)`` float32 cost of matching query q with gt m (lower is better); padded gts'
            columns are ignored.
        gt_mask: ``(B, M)`` True for real gts.
        solver: ``"scipy"`` (per image, host), ``"graph"`` (batched, the exported solver), ``"auto"``:
            scipy in eager, the graph solver while exporting.

    Returns:
        ``gt_index (B, Q)`` int64: the gt matched to each query, -1 for unmatched queries. Exactly
        ``min(Q, M_real)`` queries of each image are matched, at the smallest total cost.
    """
    if solver not in ("auto", "scipy", "graph"):
        raise ValueError(f"solver: expected 'auto', 'scipy' or 'graph', got {solver!r}")
    if checks_enabled():
        check_cost(cost, gt_mask)
    if solver == "graph" or (solver == "auto" and exporting()):
        return _shortest_augmenting_paths(cost, gt_mask)
    return _scipy(cost, gt_mask)


def check_cost(cost: Tensor, gt_mask: Tensor) -> None:
    """``cost (B, Q, M)`` float32, finite on every real gt's column; ``gt_mask (B, M)`` bool."""
    check_tensor("cost", cost)
    check_dtype("cost", cost, torch.float32)  # NaN / inf only matter on real gts: checked below
    check_shape("cost", cost, ("B", "Q", "M"))
    check_bool("gt_mask", gt_mask)
    check_shape("gt_mask", gt_mask, (cost.shape[0], cost.shape[2]))
    bad = ~torch.isfinite(cost) & gt_mask.unsqueeze(1)  # (B, Q, M) padding may hold anything
    if bool(bad.any()):
        b, q, m = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"cost: image {b} has {float(cost[b, q, m])} at (query {q}, gt {m}); every cost of a real gt must be "
            "finite (scipy's linear_sum_assignment fails on NaN/inf: check pred_boxes, pred_scores and image_sizes)")


def _scipy(cost: Tensor, gt_mask: Tensor) -> Tensor:
    """scipy's ``linear_sum_assignment`` on each image's real columns, in float64."""
    from scipy.optimize import linear_sum_assignment as lsa

    b, q, _ = cost.shape
    out = np.full((b, q), -1, dtype=np.int64)  # (B, Q)
    costs = cost.detach().to("cpu", torch.float64).numpy()  # (B, Q, M)
    masks = gt_mask.detach().cpu().numpy()  # (B, M)
    for i in range(b):
        real = np.flatnonzero(masks[i])  # (M_i,) the image's real gts
        if q == 0 or real.size == 0:
            continue
        rows, cols = lsa(costs[i][:, real])  # (P,), (P,) P = min(Q, M_i)
        out[i, rows] = real[cols]
    return torch.from_numpy(out).to(cost.device)


def _python_while(cond_fn, body_fn, state):
    """``while_loop``'s semantics as a plain loop: eager runs the graph solver without compiling it."""
    while bool(cond_fn(*state)):
        state = body_fn(*state)
    return state


def _shortest_augmenting_paths(cost: Tensor, gt_mask: Tensor) -> Tensor:
    """The batched exact solver (module docstring, steps 1-3): ``(B, Q, M)`` -> ``gt_index (B, Q)``."""
    b, q, _ = cost.shape
    cost = torch.cat([cost, cost.new_zeros(b, q, 1)], dim=2)  # (B, Q, M+1) one padded gt: M is never 0
    gt_mask = torch.cat([gt_mask, gt_mask.new_zeros(b, 1)], dim=1)  # (B, M+1)
    m = cost.shape[2]
    c1 = q + m + 1  # column 0 = the root, 1..Q = queries, Q+1..Q+M = dummies
    dev = cost.device
    # 1. the rows (gts) x columns matrix in float64, a zero row 0 so that any row index gathers safely
    a = torch.cat([cost.new_zeros(b, 1, m), cost, cost.new_zeros(b, m, m)], dim=1)  # (B, C1, M)
    a = torch.cat([a.new_zeros(b, c1, 1), a], dim=2).transpose(1, 2).to(torch.float64)  # (B, M+1, C1)
    col = torch.arange(c1, device=dev)  # (C1,)
    surplus = (gt_mask.sum(1) - q).clamp(min=0)  # (B,) gts that cannot get a query
    is_query = (col >= 1) & (col <= q)  # (C1,)
    dummy_open = (col.unsqueeze(0) > q) & (col.unsqueeze(0) - (q + 1) < surplus.unsqueeze(1))  # (B, C1)
    allowed = is_query.unsqueeze(0) | dummy_open  # (B, C1) columns a row may take
    rows = torch.arange(1, m + 1, device=dev).unsqueeze(0)  # (1, M) 1-based row ids
    inf = torch.full((), float("inf"), dtype=torch.float64, device=dev)
    limit = torch.full((), m * (m + 1) + 2, dtype=torch.int64, device=dev)  # the cap (module docstring)

    def next_row(i: Tensor) -> Tensor:  # (B,) the next real gt after row i (1-based), M + 1 if none
        return torch.where(gt_mask & (rows > i.unsqueeze(1)), rows, m + 1).amin(1)

    def cond(row, p, way, minv, used, u, v, j0, phase, it):
        return (phase != DONE).any() & (it < limit)

    def body(row, p, way, minv, used, u, v, j0, phase, it):
        at_j0 = col.unsqueeze(0) == j0.unsqueeze(1)  # (B, C1)
        searching, flipping = (phase == SEARCH).unsqueeze(1), (phase == FLIP).unsqueeze(1)  # (B, 1) each
        # 2. a Dijkstra step from the row at column j0
        used_s = used | at_j0  # (B, C1)
        i0 = p.gather(1, j0.unsqueeze(1)).clamp(max=m)  # (B, 1) that row (done images: any valid row)
        u0 = u.gather(1, j0.unsqueeze(1))  # (B, 1) its potential
        reduced = a.gather(1, i0.unsqueeze(2).expand(b, 1, c1)).squeeze(1) - u0 - v  # (B, C1)
        open_ = allowed & ~used_s  # (B, C1)
        closer = open_ & (reduced < minv)  # (B, C1)
        minv_s = torch.where(closer, reduced, minv)  # (B, C1)
        way_s = torch.where(closer, j0.unsqueeze(1), way)  # (B, C1)
        dist = torch.where(open_, minv_s, inf)  # (B, C1)
        delta = dist.amin(1, keepdim=True)  # (B, 1) the closest open column's distance
        j1 = dist.argmin(1)  # (B,) that column (the first on ties)
        u_s = torch.where(used_s, u + delta, u)  # (B, C1)
        v_s = torch.where(used_s, v - delta, v)  # (B, C1)
        minv_s = torch.where(used_s, minv_s, minv_s - delta)  # (B, C1)
        free = p.gather(1, j1.unsqueeze(1)).squeeze(1) == 0  # (B,) no row sits there: the path ends
        # 3. a step back along the path: column j0 takes its predecessor's row
        back = way.gather(1, j0.unsqueeze(1))  # (B, 1)
        p_f = torch.where(at_j0, p.gather(1, back), p)  # (B, C1)
        u_f = torch.where(at_j0, u.gather(1, back), u)  # (B, C1)
        back = back.squeeze(1)  # (B,)
        placed = (phase == FLIP) & (back == 0)  # (B,) the new row reached the path's first column
        # the step each image takes, by its phase
        p = torch.where(flipping, p_f, p)  # (B, C1)
        u = torch.where(searching, u_s, torch.where(flipping, u_f, u))  # (B, C1)
        v = torch.where(searching, v_s, v)  # (B, C1)
        minv = torch.where(searching, minv_s, minv)  # (B, C1)
        way = torch.where(searching, way_s, way)  # (B, C1)
        used = (searching & used_s) | (~searching & used)  # (B, C1) no Where on bool (CUDA has none)
        j0 = torch.where(phase == SEARCH, j1, torch.where(phase == FLIP, back, j0))  # (B,)
        phase = torch.where((phase == SEARCH) & free, FLIP, phase)  # (B,)
        # 1. the next real gt, or done
        row = torch.where(placed, next_row(row), row)  # (B,)
        phase = torch.where(placed, torch.where(row > m, DONE, SEARCH), phase)  # (B,)
        root = placed.unsqueeze(1) & (col.unsqueeze(0) == 0)  # (B, C1)
        p = torch.where(root, row.unsqueeze(1), p)  # (B, C1) the new row waits at the root
        u = torch.where(root, 0.0, u)  # (B, C1) a row never placed has potential 0
        minv = torch.where(placed.unsqueeze(1), inf, minv)  # (B, C1)
        used = used & ~placed.unsqueeze(1)  # (B, C1)
        j0 = torch.where(placed, 0, j0)  # (B,)
        return row, p, way, minv, used, u, v, j0, phase, it + 1

    row = next_row(torch.zeros(b, dtype=torch.int64, device=dev))  # (B,) the first real gt
    p = torch.where(col.unsqueeze(0) == 0, row.unsqueeze(1), 0)  # (B, C1) row at each column, 0 = none
    state = (
        row, p, torch.zeros_like(p),  # row, p, way (B, C1): each reached column's predecessor
        torch.full((b, c1), float("inf"), dtype=torch.float64, device=dev),  # minv: tentative distances
        torch.zeros(b, c1, dtype=torch.bool, device=dev),  # used: columns in the search tree
        torch.zeros(b, c1, dtype=torch.float64, device=dev),  # u: potential of the row at each column
        torch.zeros(b, c1, dtype=torch.float64, device=dev),  # v: column potentials
        torch.zeros(b, dtype=torch.int64, device=dev),  # j0: the current column
        torch.where(row > m, DONE, SEARCH),  # phase (B,)
        torch.zeros((), dtype=torch.int64, device=dev),  # iterations so far
    )
    loop = while_loop if exporting() else _python_while
    p = loop(cond, body, state)[1]  # (B, C1) final rows
    return p[:, 1 : q + 1] - 1  # (B, Q) 0-based gt of each query, -1 for none
