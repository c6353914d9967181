"""Survey mask bits: names ↔ numbers, and the ``mask_bits`` attribute of the container.

The container stores the names of a survey's pixel-mask bits as a string attribute
``mask_bits = "0:BADPIX,1:CRPIX,..."`` (a string survives netCDF and FITS); the
readers and :func:`bayescannon.preprocess.mask_bits` turn bit names into an integer
with :func:`bits_to_int`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from bayescannon.errors import InvalidInputError

__all__ = ["bits_to_int", "mask_bits_attr"]


def mask_bits_attr(bits: Mapping[int, str]) -> str:
    """Encode a bit-number → name mapping as the ``mask_bits`` attribute string.

    Parameters
    ----------
    bits : mapping of int to str

    Returns
    -------
    str
        ``"0:BADPIX,1:CRPIX,..."`` in bit order.
    """
    return ",".join(f"{int(b)}:{name}" for b, name in sorted(bits.items()))


def _parse_bits_attr(text) -> dict[str, int]:
    """Bit name → bit number from a ``mask_bits`` attribute.

    Understands ``"0:BADPIX,1:CRPIX"`` (bit numbers, as written by the readers) and
    ``"1=BADPIX: description; 2=WINDOW: ..."`` (bit values, as written by the
    simulator); also a mapping in either direction.
    """
    if isinstance(text, Mapping):
        out = {}
        for k, v in text.items():
            if isinstance(k, str):
                out[k.strip().upper()] = int(v).bit_length() - 1 if int(v) > 0 else 0
            else:
                out[str(v).strip().upper()] = int(k)
        return out
    out: dict[str, int] = {}
    for item in re.split(r"[;,]", str(text or "")):
        item = item.strip()
        try:
            if "=" in item:
                value, rest = item.split("=", 1)
                value = int(value)
                if value <= 0 or value & (value - 1):
                    continue
                out[rest.split(":", 1)[0].strip().upper()] = value.bit_length() - 1
            elif ":" in item:
                b, name = item.split(":", 1)
                out[name.strip().upper()] = int(b)
        except ValueError:
            continue
    return out


def bits_to_int(bits, names: Mapping[int, str] | str | None = None) -> int:
    """Combine bit numbers and/or bit names into one integer bit mask.

    Parameters
    ----------
    bits : int, str or iterable of int/str, or None
        Bit numbers (0-31) or names (e.g. ``"BADPIX"``). ``None`` or empty → 0.
    names : mapping or str, optional
        Bit number → name mapping (or a ``mask_bits`` attribute string) used to
        resolve names.

    Returns
    -------
    int

    Raises
    ------
    InvalidInputError
        For an unknown name or a bit number outside 0-31.
    """
    if bits is None:
        return 0
    if isinstance(bits, (int, np.integer, str)):
        bits = [bits]
    lookup = _parse_bits_attr(names) if names is not None else {}
    value = 0
    for b in bits:
        if isinstance(b, (str, np.str_)):
            key = str(b).strip().upper()
            if key.isdigit():
                b = int(key)
            elif key in lookup:
                b = lookup[key]
            else:
                known = ", ".join(sorted(lookup)) or "none"
                raise InvalidInputError(f"unknown mask bit name {b!r}; known names: {known}")
        b = int(b)
        if not 0 <= b < 32:
            raise InvalidInputError(f"mask bit numbers must be 0-31; got {b}")
        value |= 1 << b
    return value
