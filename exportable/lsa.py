"""Linear sum assignment (the matching DETR's Hungarian step solves), batched: scipy in eager, a Loop in ONNX.

Shape shorthand: ``B`` images, ``Q`` queries (the cost matrix's rows), ``M`` gts per image (its columns,
padded; ``gt_mask (B, M)`` marks the real ones), ``C1 = Q + M + 2`` the solver's columns and ``K`` the rows
bidding in a later round of its step 2 (below).

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

How the graph solver works (steps as in ``docs/algorithms.md`` §17.3). Rows are the image's real gts, columns
the ``Q`` queries plus ``M + 1`` dummy columns of cost 0, of which the first ``max(0, M_real - Q)`` are open:
with more gts than queries the surplus gts end on a dummy (unmatched), which leaves the optimum of the real pairs
unchanged; with fewer, no dummy is open and every gt gets a query. Column 0 is the searches' root. The dual
potentials are ``v`` per column and, for an assigned row, ``u = cost(row, its column) - v(its column)`` (its pair
is tight), so only ``v`` is stored. Steps 2-4 keep three invariants: every reduced cost ``cost - u - v`` of an
assigned row on a column it may take is >= 0, ``v <= 0``, and ``v = 0`` on every free column; so the rows
assigned so far are matched at the smallest total they can have, and the last row placed ends at the optimum.

1. The cost as a ``(B, M+3, C1)`` float32 matrix: rows 1..M+1 the gts (the last a padded one, so that M is
   never 0), rows 0 and M+2 zero (gathering "no row" or "no more rows" is safe), column 0 the root.
2. Initial assignment (Jonker and Volgenant's augmenting row reduction, every row at once), ``ROUNDS`` rounds:
   each unassigned real row finds its cheapest column at the prices ``-v`` and bids the gap to its second
   cheapest; on each column the highest bid wins (the lower row on equal bids), takes the column (its previous
   row becomes unassigned) and the column's ``v`` falls by the bid. The winner's ``u`` is then its second
   cheapest reduced cost, so the invariants hold. Round 1 bids on the costs themselves (``v = 0``, float32,
   exact); later rounds in float64, by the first ``(M + 3) // BIDDERS + 1`` rows still unassigned. On DETR-like
   costs most gts' cheapest queries differ and these rounds place nearly every gt.
3. Each row left (in gt order) is inserted by a Dijkstra search over reduced costs, distances counted from the
   new row (``u = 0`` at the root): each step takes the closest open column; if a row sits there, the search
   continues from that row; a free column (the sink) ends it, and every column taken moves its ``v`` by its
   distance minus the sink's (as scipy's solver does), which keeps the invariants.
4. The path found is flipped back column by column (``way``): each column takes the row of its predecessor,
   and the new row lands on the path's first column. The first flip step runs in the sink's iteration.

Steps 3-4 are one ``Loop``: every image runs its own step in the same iteration (``phase`` says which), so
the loop ends when the slowest image has placed its rows: 0 iterations at 300 queries x 20 gts, 13 at 300 x 100
(``benchmarks/run.py``'s DETR costs; 42 and 267 without step 2 and the merged flip step). A row inserted when
``P`` rows are placed takes at most ``P + 1`` search steps and as many flip steps, one of them in the sink's
iteration: at most ``2 P + 1`` iterations. With ``L`` rows left by step 2 that sums to ``2 L M - L^2 <= M^2``,
so the loop is capped at ``(M + 1)^2 + 1`` iterations. NaN costs cannot raise in a graph: the cap still ends
the loop, the answer is then unspecified.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch._higher_order_ops.while_loop import while_loop

from exportable._checks import check_bool, check_dtype, check_shape, check_tensor, checks_enabled, exporting

__all__ = ["linear_sum_assignment", "Solver"]

Solver = Literal["auto", "scipy", "graph"]

SEARCH, FLIP, DONE = 0, 1, 2  # an image's phase: Dijkstra steps (3), flipping the path (4), all gts placed
ROUNDS = 2  # bidding rounds of step 2 (0: the loop inserts every row)
BIDDERS = 4  # after round 1, about 1 / BIDDERS of the rows may bid (the loop places any others)


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
        return _shortest_augmenting_paths(cost, gt_mask)[0]
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


def _shortest_augmenting_paths(cost: Tensor, gt_mask: Tensor, *, rounds: int = ROUNDS) -> tuple[Tensor, Tensor]:
    """The batched exact solver (module docstring, steps 1-4): ``(B, Q, M)`` -> ``gt_index (B, Q)`` and the
    number of ``Loop`` iterations it ran (a scalar). ``rounds``: step 2's bidding rounds."""
    b, q, mm = cost.shape
    m = mm + 1  # the gts and one padded gt
    c1 = q + m + 1  # column 0 = the root, 1..Q = queries, Q+1..Q+M+1 = dummies
    dev = cost.device
    # 1. rows (0 zero, 1..M+1 gts, M+2 zero) x columns, float32
    a = F.pad(cost.transpose(1, 2), (1, m, 1, 2))  # (B, M+3, C1) zero root column, dummies and extra rows
    flat = a.reshape(b * (m + 2), c1)  # (B*(M+3), C1) every image's rows, for gathering rows
    offset = torch.arange(b, device=dev).unsqueeze(1) * (m + 2)  # (B, 1) each image's first row in flat
    real = torch.cat([gt_mask.new_zeros(b, 1), gt_mask, gt_mask.new_zeros(b, 2)], dim=1)  # (B, M+3) real rows
    col = torch.arange(c1, device=dev).unsqueeze(0)  # (1, C1)
    rows = torch.arange(m + 2, device=dev).unsqueeze(0)  # (1, M+3) row ids
    surplus = (gt_mask.sum(1, keepdim=True) - q).clamp(min=0)  # (B, 1) gts that cannot get a query
    allowed = ((col >= 1) & (col <= q)) | ((col > q) & (col - (q + 1) < surplus))  # (B, C1) columns a row may take
    root = col == 0  # (1, C1)
    inf = torch.full((), float("inf"), dtype=torch.float64, device=dev)
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    closed = torch.where(allowed, zero, inf).unsqueeze(1)  # (B, 1, C1) + inf where no row may go
    # 2. the initial assignment: rounds of bids, every unassigned row at once
    p = torch.zeros(b, c1, dtype=torch.int64, device=dev)  # (B, C1) the row at each column, 0 = none
    v = torch.zeros(b, c1, dtype=torch.float64, device=dev)  # (B, C1) column potentials, <= 0
    assigned = torch.zeros_like(real)  # (B, M+3)
    for k in range(rounds):
        if k == 0:  # every real row; v = 0, so the reduced costs are the costs: float32 is exact
            ids, bidding = rows.expand(b, m + 2), real  # (B, M+3) each: the rows and which of them bid
            d = a + closed.float()  # (B, M+3, C1)
        else:  # the first K rows still unassigned (row M+2 fills the rest)
            ids = torch.where(real & ~assigned, rows, m + 1).sort(1).values[:, : (m + 2) // BIDDERS + 1]  # (B, K)
            bidding = ids <= m  # (B, K)
            d = flat.index_select(0, (ids + offset).reshape(-1)).reshape(b, ids.shape[1], c1)  # (B, K, C1)
            d = d.double() + (closed - v.unsqueeze(1))  # (B, K, C1) reduced costs at u = 0
        j = d.argmin(2, keepdim=True)  # (B, K, 1) each row's cheapest column (the first on ties)
        best = d.gather(2, j).squeeze(2).double()  # (B, K)
        second = d.scatter(2, j, float("inf")).amin(2).double()  # (B, K) the next cheapest column's
        bid = torch.where(second < inf, second - best, zero)  # (B, K) a row with one column bids 0
        j = j.squeeze(2)  # (B, K)
        order = torch.arange(j.shape[1], device=dev)  # (K,) ids increase along K
        rival = (j.unsqueeze(1) == j.unsqueeze(2)) & bidding.unsqueeze(1)  # (B, K, K) [r, s]: s bids on r's column
        higher = (bid.unsqueeze(1) > bid.unsqueeze(2)) | (
            (bid.unsqueeze(1) == bid.unsqueeze(2)) & (order.unsqueeze(0) < order.unsqueeze(1)))  # (B, K, K) s beats r
        wins = bidding & ~(rival & higher).any(2)  # (B, K) one winner per column
        target = torch.where(wins, j, 0)  # (B, K) the losers write to the root column, reset below
        evicted = p.gather(1, target)  # (B, K) the row each winner replaces (0: none)
        p = p.scatter(1, target, ids)  # (B, C1)
        v = v.scatter(1, target, v.gather(1, target) - bid)  # (B, C1) the column's v falls by the bid
        p, v = torch.where(root, 0, p), torch.where(root, zero, v)  # (B, C1) each
        assigned = assigned.scatter(1, evicted, torch.zeros_like(wins))  # (B, M+3) row 0 takes the junk
        assigned = assigned.scatter(1, torch.where(wins, ids, 0), wins)  # (B, M+3)
    queue = torch.where(real & ~assigned, rows, m + 1).sort(1).values  # (B, M+3) the rows left, then M+2s
    after = torch.zeros_like(queue).scatter(1, queue[:, :-1], queue[:, 1:])  # (B, M+3) the row left after each
    row = queue[:, :1]  # (B, 1) the first row to insert, M+2 if none
    p = torch.where(root, row, p)  # (B, C1) the row being inserted waits at the root
    blocked0 = ~allowed | root  # (B, C1) columns a search never takes
    limit = torch.full((), m * m + 1, dtype=torch.int64, device=dev)  # the cap (module docstring)

    def cond(p, v, dist, way, scanned, row, j0, low, phase, it):
        return (phase.amin((0, 1)) < DONE) & (it < limit)

    def body(p, v, dist, way, scanned, row, j0, low, phase, it):
        searching = phase == SEARCH  # (B, 1)
        blocked = blocked0 | (scanned == row)  # (B, C1)
        # 3. a Dijkstra step from the row at column j0 (distances from the new row, potentials as they were)
        i0 = p.gather(1, j0)  # (B, 1) that row
        ai = flat.index_select(0, (i0 + offset).reshape(b)).double()  # (B, C1) its costs
        u0 = ai.gather(1, j0) - v.gather(1, j0)  # (B, 1) its potential: its pair is tight (0 at the root)
        reduced = ai - v + (low - u0)  # (B, C1) the distance of each column through that row
        closer = ~blocked & (reduced < dist)  # (B, C1)
        dist = torch.where(closer, reduced, dist)  # (B, C1)
        way = torch.where(closer, j0, way)  # (B, C1)
        open_dist = torch.where(blocked, inf, dist)  # (B, C1)
        j1 = open_dist.argmin(1, keepdim=True)  # (B, 1) the closest open column (the first on ties)
        lowest = open_dist.gather(1, j1)  # (B, 1) its distance
        scanned = torch.where(col == j1, row, scanned)  # (B, C1) taken by this row's search
        sink = searching & (p.gather(1, j1) == 0)  # (B, 1) a free column ends the search
        v = torch.where(sink, v + torch.minimum(dist - lowest, zero), v)  # (B, C1) columns taken move
        low = torch.where(searching, lowest, zero)  # (B, 1)
        j0 = torch.where(searching, j1, j0)  # (B, 1)
        phase = torch.where(sink, FLIP, phase)  # (B, 1)
        # 4. a step back along the path: column j0 takes its predecessor's row
        flipping = phase == FLIP  # (B, 1)
        back = way.gather(1, j0)  # (B, 1)
        p = torch.where(flipping & (col == j0), p.gather(1, back), p)  # (B, C1)
        j0 = torch.where(flipping, back, j0)  # (B, 1)
        placed = flipping & (j0 == 0)  # (B, 1) the new row reached the path's first column
        # the next row left (it waits at the root), or done
        row = torch.where(placed, after.gather(1, row), row)  # (B, 1)
        phase = torch.where(placed, torch.where(row > m, DONE, SEARCH), phase)  # (B, 1)
        p = torch.where(placed & root, row, p)  # (B, C1)
        dist = torch.where(placed, inf, dist)  # (B, C1)
        return p, v, dist, way, scanned, row, j0, low, phase, it + 1

    state = (
        p, v,
        torch.full((b, c1), float("inf"), dtype=torch.float64, device=dev),  # dist: tentative distances
        torch.zeros(b, c1, dtype=torch.int64, device=dev),  # way: each reached column's predecessor
        torch.zeros(b, c1, dtype=torch.int64, device=dev),  # scanned: the row whose search took the column
        row.clone(),  # row: the row being inserted (M+2: none left)
        torch.zeros(b, 1, dtype=torch.int64, device=dev),  # j0: the current column
        torch.zeros(b, 1, dtype=torch.float64, device=dev),  # low: the distance of the column taken last
        torch.where(row > m, DONE, SEARCH),  # phase (B, 1)
        torch.zeros((), dtype=torch.int64, device=dev),  # iterations so far
    )
    loop = while_loop if exporting() else _python_while
    out = loop(cond, body, state)
    return out[0][:, 1 : q + 1] - 1, out[-1]  # (B, Q) 0-based gt of each query, -1 for none; iterations
