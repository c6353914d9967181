"""The graph of surveys: overlaps, and the path by which each survey reaches the reference.

Per label, the nodes are the reference (``REF``: the joint reference scale) and the other
surveys; an edge joins two nodes with at least ``min_overlap`` stars in common (the
``min_overlap`` of the survey being calibrated). A survey with enough direct overlap with
the reference is calibrated on it directly. Any other survey takes the path of least
cost, where an edge costs ``sigma_d² (1 + 50 / n)``, ``sigma_d`` being the robust scatter
(1.4826 MAD) of the raw differences over its ``n`` common stars: a proxy of the
uncertainty the correction adds, which grows with the scatter and shrinks with overlap.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Mapping

import numpy as np

from bayescannon.errors import InsufficientDataError

logger = logging.getLogger(__name__)

__all__ = ["REF", "robust_scatter", "edge_costs", "survey_paths"]

#: Name of the reference node.
REF = "REF"


def robust_scatter(x) -> float:
    """1.4826 × the median absolute deviation of the finite values (NaN if none)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def edge_costs(values: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """Overlaps and edge costs of every pair of nodes.

    Parameters
    ----------
    values : mapping node → (n_stars,) array on the common star index (NaN: absent)

    Returns
    -------
    overlap : dict (a, b) → int
    cost : dict (a, b) → float (both orders)
    """
    names = list(values)
    overlap, cost = {}, {}
    for i, a in enumerate(names):  # a handful of surveys
        for b in names[i + 1 :]:
            both = np.isfinite(values[a]) & np.isfinite(values[b])
            n = int(both.sum())
            overlap[(a, b)] = overlap[(b, a)] = n
            if n:
                s = robust_scatter(values[a][both] - values[b][both])
                cost[(a, b)] = cost[(b, a)] = (s**2 + 1e-30) * (1.0 + 50.0 / n)
    return overlap, cost


def survey_paths(surveys, overlap: Mapping, cost: Mapping, min_overlap: Mapping, label: str = "") -> dict:
    """The path of every survey to :data:`REF`: ``{survey: [survey, ..., REF]}``.

    Raises
    ------
    InsufficientDataError
        A survey with no path to the reference, named with its overlaps.
    """
    paths = {}
    for s in surveys:
        if overlap.get((s, REF), 0) >= min_overlap[s]:
            paths[s] = [s, REF]
    # Dijkstra from REF over the edges with enough overlap (for the survey nearer the leaves)
    nodes = [REF, *surveys]
    dist = {REF: 0.0}
    prev: dict = {}
    heap = [(0.0, REF)]
    while heap:
        d, u = heapq.heappop(heap)
        if d > dist.get(u, np.inf):
            continue
        for v in surveys:
            if v == u or overlap.get((u, v), 0) < min_overlap[v] or (u, v) not in cost:
                continue
            nd = d + cost[(u, v)]
            if nd < dist.get(v, np.inf):
                dist[v], prev[v] = nd, u
                heapq.heappush(heap, (nd, v))
    for s in surveys:
        if s in paths:
            continue
        if s not in prev:
            ov = {t: overlap.get((s, t), 0) for t in nodes if t != s}
            raise InsufficientDataError(
                f"{label}: survey {s} has no path to the reference scale: overlaps "
                + ", ".join(f"{t}={n}" for t, n in ov.items())
                + f" (min_overlap {min_overlap[s]})"
            )
        p, u = [s], s
        while u != REF:
            u = prev[u] if u not in paths or u == s else paths[u][1]
            p.append(u)
        paths[s] = p
    # a chained survey whose parent is direct keeps the parent's path
    for s, p in paths.items():
        logger.info("%s: %s reaches the reference via %s", label, s, " > ".join(p))
    return paths
