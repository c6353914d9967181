"""The scikit-learn estimator contract, written once for every estimator of the package.

Constructor parameters are read from the signature of ``__init__`` (the one place they are
listed) and stored under their own names; ``get_params``/``set_params``/``clone`` follow.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Self

from bayescannon.errors import InvalidInputError

__all__ = ["ParamsMixin"]


class ParamsMixin:
    """``get_params``, ``set_params`` and ``clone`` from the constructor's signature."""

    @classmethod
    def _get_param_names(cls) -> list[str]:
        """Constructor parameter names, read from the signature (the one place they are listed)."""
        sig = inspect.signature(cls.__init__)
        return sorted(
            name
            for name, p in sig.parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        )

    def get_params(self, deep: bool = True) -> dict:
        """Constructor arguments (scikit-learn contract).

        Parameters
        ----------
        deep : bool
            Accepted for scikit-learn compatibility; no parameter is itself an estimator.

        Returns
        -------
        dict
            ``{name: value}`` for every constructor parameter; ``cls(**params)`` rebuilds
            an unfitted estimator with the same settings.
        """
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params: Any) -> Self:
        """Set constructor arguments (scikit-learn contract); returns ``self``.

        Raises
        ------
        InvalidInputError
            A name that is not a constructor parameter.
        """
        valid = self._get_param_names()
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise InvalidInputError(
                f"unknown {type(self).__name__} parameter(s) {unknown}; valid parameters are {valid}"
            )
        for name, value in params.items():
            setattr(self, name, self._coerce_param(name, value))
        self._params_changed()
        return self

    def clone(self) -> Self:
        """A new, unfitted estimator with (deep copies of) the same constructor arguments."""
        return type(self)(**copy.deepcopy(self.get_params(deep=False)))

    # hooks for subclasses
    def _coerce_param(self, name: str, value):
        """The value stored for parameter ``name`` (default: as given)."""
        return value

    def _params_changed(self) -> None:
        """Called after ``set_params`` (default: nothing); e.g. to drop caches."""
