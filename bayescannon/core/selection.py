"""Model selection from cross-validated per-star losses: the best score or the one-standard-error rule.

The conditional calibration (:mod:`bayescannon.core.conditional`) chooses the form and ridge
strength of its bias and width models by K-fold cross-validation of the calibration set
itself. Taking the candidate with the lowest CV score picks up selection noise: with a few
dozen candidates, one whose true gain is nil often scores best by chance. The
one-standard-error rule (Breiman et al. 1984; Hastie, Tibshirani & Friedman, *The Elements of
Statistical Learning*, §7.10) takes instead the *simplest* candidate whose CV score is within
one standard error of the best.
"""

from __future__ import annotations

import numpy as np

from bayescannon.errors import InvalidInputError

__all__ = ["DEFAULT_SELECTION", "SELECTION_RULES", "select_candidate"]

#: ``"best"``: the lowest mean CV loss; ``"one-se"``: the simplest candidate within one
#: standard error of the best, the standard error of the per-star *difference* of losses to
#: the best candidate (paired: the star-to-star spread common to all candidates cancels);
#: ``"one-se-classic"``: the same with the standard error of the best candidate's own mean loss.
SELECTION_RULES = ("best", "one-se", "one-se-classic")
#: The rule of the calibration's bias and width models (docs/guides/calibration.md, "one-standard-error rule").
DEFAULT_SELECTION = "best"


def select_candidate(losses, complexity, rule="best"):
    """Index of the chosen candidate.

    Parameters
    ----------
    losses : ndarray, shape (C, N)
        Out-of-fold loss of every star (columns) under every candidate (rows); the CV score
        of a candidate is its row mean.
    complexity : sequence of tuple, length C
        Sort keys, smaller = simpler (e.g. ``(number of terms, -ridge strength)``).
    rule : {"best", "one-se", "one-se-classic"}
        See :data:`SELECTION_RULES`.

    Returns
    -------
    int
        Row of the chosen candidate: among the candidates whose mean loss is at most the
        best mean plus one standard error, the simplest (ties: the lower mean loss).
    """
    if rule not in SELECTION_RULES:
        raise InvalidInputError(f"selection rule must be one of {SELECTION_RULES}; got {rule!r}")
    losses = np.atleast_2d(np.asarray(losses, dtype=np.float64))
    c, n = losses.shape
    if len(complexity) != c:
        raise InvalidInputError(f"{c} candidates' losses but {len(complexity)} complexity keys")
    mean = losses.mean(axis=1)
    best = int(np.argmin(mean))
    if rule == "best" or n < 2:
        return best
    if rule == "one-se":
        se = (losses - losses[best]).std(axis=1, ddof=1) / np.sqrt(n)
    else:
        se = np.full(c, losses[best].std(ddof=1) / np.sqrt(n))
    within = np.flatnonzero(mean <= mean[best] + se)
    return int(min(within, key=lambda i: (tuple(complexity[i]), mean[i])))
