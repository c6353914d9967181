"""Polynomial vectorizer: the label-dependent design vector v(ℓ) of The Cannon.

Terms are ordered by degree, then lexicographically over label indices (as
``itertools.combinations_with_replacement``). For three labels (a, b, c) and order 2
the terms are ``1, a, b, c, a^2, a*b, a*c, b^2, b*c, c^2``; the vector of labels
(1, 2, 3) is ``[1, 1, 2, 3, 1, 2, 3, 4, 6, 9]``.

The value is written with array operations that work both on numpy arrays and on
PyTensor tensors (``xp=numpy`` or ``xp=pytensor.tensor``), so the MAP engine and the
PyMC models share one definition.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations_with_replacement

import numpy as np

from bayescannon.errors import InvalidInputError, LabelError

__all__ = ["PolynomialVectorizer"]


class PolynomialVectorizer:
    """Polynomial design vector of any order over named labels.

    Parameters
    ----------
    label_names : sequence of str
        Names of the K labels, in column order.
    order : int, default 2
        Highest total degree of the polynomial.

    Attributes
    ----------
    terms : list of tuple of int
        Label indices multiplied together in each term (``()`` is the constant).
    exponents : ndarray of int, shape (T, K)
        Exponent of each label in each term.
    term_names : list of str
        Human-readable names (``"1"``, ``"TEFF"``, ``"TEFF^2"``, ``"TEFF*LOGG"``).
    """

    def __init__(self, label_names, order: int = 2):
        label_names = [str(n) for n in label_names]
        if len(label_names) == 0:
            raise LabelError("at least one label name is required")
        if len(set(label_names)) != len(label_names):
            dup = [n for n, c in Counter(label_names).items() if c > 1]
            raise LabelError(f"label names are duplicated: {dup}")
        if int(order) != order or order < 1:
            raise InvalidInputError(f"order must be a positive integer; got {order!r}")
        self.label_names = label_names
        self.order = int(order)
        k = len(label_names)
        terms = [()]
        for degree in range(1, self.order + 1):
            terms.extend(combinations_with_replacement(range(k), degree))
        self.terms = terms
        exps = np.zeros((len(terms), k), dtype=np.int64)
        for t, term in enumerate(terms):
            for i in term:
                exps[t, i] += 1
        self.exponents = exps
        self.term_names = [self._name(e) for e in exps]
        # recursion used by the value, the Jacobian and the compiled test step:
        # term t = term parent[t] × label last[t]
        index = {(): 0}
        parent = np.zeros(len(terms), dtype=np.int64)
        last = np.zeros(len(terms), dtype=np.int64)
        for t, term in enumerate(terms[1:], start=1):
            parent[t] = index[term[:-1]]
            last[t] = term[-1]
            index[term] = t
        self.parent = parent
        self.last = last

    def _name(self, exps) -> str:
        parts = []
        for name, e in zip(self.label_names, exps):
            if e == 1:
                parts.append(name)
            elif e > 1:
                parts.append(f"{name}^{e}")
        return "*".join(parts) if parts else "1"

    @property
    def n_labels(self) -> int:
        return len(self.label_names)

    @property
    def n_terms(self) -> int:
        return len(self.terms)

    def __repr__(self) -> str:
        return f"PolynomialVectorizer(label_names={self.label_names!r}, order={self.order})"

    def __call__(self, labels, xp=np):
        """Design matrix for scaled labels.

        Parameters
        ----------
        labels : array or tensor, shape (..., K)
            Scaled labels.
        xp : module, default numpy
            Array namespace (``numpy`` or ``pytensor.tensor``).

        Returns
        -------
        array or tensor, shape (..., T)
        """
        if xp is np:
            labels = np.asarray(labels, dtype=np.float64)
            if labels.shape[-1] != self.n_labels:
                raise LabelError(
                    f"labels have {labels.shape[-1]} columns but the vectorizer has "
                    f"{self.n_labels} labels {self.label_names}"
                )
            return self._value_numpy(labels)
        cols = [xp.ones_like(labels[..., 0])]
        for term in self.terms[1:]:
            col = labels[..., term[0]]
            for i in term[1:]:
                col = col * labels[..., i]
            cols.append(col)
        return xp.stack(cols, axis=-1)

    def _value_numpy(self, labels):
        out = np.empty(labels.shape[:-1] + (self.n_terms,), dtype=np.float64)
        out[..., 0] = 1.0
        # build each term from a lower-degree one: term = parent * labels[last]
        for t in range(1, self.n_terms):
            np.multiply(out[..., self.parent[t]], labels[..., self.last[t]], out=out[..., t])
        return out

    def jacobian(self, labels, value=None):
        """Analytic derivative of the design matrix with respect to the scaled labels.

        Parameters
        ----------
        labels : array_like, shape (..., K)
        value : ndarray, shape (..., T), optional
            ``self(labels)`` if already computed.

        Returns
        -------
        ndarray, shape (..., T, K)
            ``J[..., t, k] = d v_t / d label_k``.

        Notes
        -----
        Built term by term with the product rule: a term ``t = parent * label_j`` has
        ``∂t = ∂parent * label_j + parent * e_j``.
        """
        labels = np.asarray(labels, dtype=np.float64)
        k = self.n_labels
        if labels.shape[-1] != k:
            raise LabelError(f"labels have {labels.shape[-1]} columns but the vectorizer has {k} labels")
        v = self._value_numpy(labels) if value is None else value
        out = np.zeros(labels.shape[:-1] + (self.n_terms, k), dtype=np.float64)
        for t in range(1, self.n_terms):  # loop over terms only
            parent, j = self.parent[t], self.last[t]
            np.multiply(out[..., parent, :], labels[..., j, None], out=out[..., t, :])
            out[..., t, j] += v[..., parent]
        return out
