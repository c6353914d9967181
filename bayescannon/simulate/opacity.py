"""Line physics and the synthesis engine: Boltzmann-Saha line strengths, pseudo-Voigt
opacities, the saturating curve of growth exp(-tau) on an oversampled grid, instrumental
broadening and pixel integration.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.fft

from bayescannon.core.grid import C_KMS
from bayescannon.simulate.instruments import Instrument
from bayescannon.simulate.labels import LABEL_NAMES, _validate_labels
from bayescannon.simulate.linelist import _REFERENCE_STAR, LineList

logger = logging.getLogger(__name__)

__all__ = [
    "line_strengths",
]


_LN10 = math.log(10.0)
_K_OVER_AMU = 8.314462618e-3  # Boltzmann constant / atomic mass unit in (km/s)^2 / K
_FINE_STEP_KMS = 1.2  # step of the grid on which exp(-tau) is evaluated
_CHUNK_ELEMENTS = 10_000_000  # doubles per star-chunk work array (bounds memory, ~80 MB)


# Label box over which line windows are sized (label-independent windows keep the
# spectra smooth in the labels and independent of the chunking).
_WINDOW_ENVELOPE = {
    "TEFF": (3500.0, 7000.0),
    "LOGG": (0.0, 5.0),
    "FE_H": (-2.5, 0.5),
    "ALPHA_FE": (-0.2, 0.5),
}


# --------------------------------------------------------------------------------------
# line physics
# --------------------------------------------------------------------------------------


def _log_electron_pressure(teff, logg, feh):
    """log10 electron pressure (dyn cm^-2) of the line-forming layers (a mock relation)."""
    return 1.25 + 0.5 * (logg - 4.44) + 8.0 * np.log10(teff / 5777.0) + 0.3 * feh


def _log_line_number(lines: LineList, teff, logg, feh, alpha):
    """log10 of the (relative) number of absorbers per unit continuous opacity.

    Shapes: labels (n, 1), result (n, L).
    """
    theta = 5040.0 / teff
    log_pe = _log_electron_pressure(teff, logg, feh)
    log_kappa = log_pe + 2.5 * np.log10(theta) + 0.754 * theta  # H- bound-free
    log_n = lines.metal_weight * feh + lines.alpha_weight * alpha - theta * lines.excitation
    is_mol = lines.kind == "molecule"
    is_h = lines.kind == "hydrogen"
    is_metal_atom = ~(is_mol | is_h)
    # Saha: log10(N_II / N_I) = log10(Phi(T)) - log10(Pe)
    log_phi = -0.1762 + math.log10(2.0) + 2.5 * np.log10(teff) - theta * lines.ionisation
    x = (log_phi - log_pe) * _LN10
    log_one_plus_r = np.logaddexp(0.0, x) / _LN10
    log_frac = np.where(lines.stage == 2, x / _LN10 - log_one_plus_r, -log_one_plus_r)
    atom_term = np.where(is_metal_atom, log_frac, 0.0) - log_kappa
    mol_term = theta * lines.dissociation + lines.gravity_power * logg
    return log_n + np.where(is_mol, mol_term, atom_term)


def _microturbulence(teff, logg):
    """Microturbulent velocity (km/s), a smooth mock relation."""
    return np.clip(0.9 + 0.25 * (4.5 - logg) + 0.3 * (teff - 5000.0) / 1000.0, 0.5, 3.0)


def _macroturbulence(teff, logg):
    """Gaussian sigma (km/s) of the macroturbulent broadening, a smooth mock relation."""
    return np.clip(1.8 + 0.8 * (teff - 5000.0) / 1000.0 + 0.35 * (3.5 - logg), 1.0, 6.0)


def _labels_columns(labels: Mapping[str, np.ndarray]):
    """Label columns as (N, 1) float arrays, in ``LABEL_NAMES`` order."""
    return tuple(np.asarray(labels[k], dtype=float)[:, None] for k in LABEL_NAMES)


def line_strengths(lines: LineList, labels) -> dict[str, np.ndarray]:
    """Per-star, per-line strength and profile parameters.

    With ``theta = 5040 / Teff`` and the mock electron pressure
    ``log10 Pe = 1.25 + 0.5 (logg - 4.44) + 8 log10(Teff / 5777) + 0.3 [Fe/H]``:

    * atoms: ``log10 S = log10 S_ref + Delta[ w_m [Fe/H] + w_a [alpha/Fe] - theta chi
      + log10 f_stage(Teff, Pe) - log10 kappa_c ]`` with the Saha ionisation fraction
      ``f_stage`` (``N_II / N_I = Phi(T) / Pe``, ``log10 Phi = 2.5 log10 T - theta
      chi_ion + log10(2) - 0.1762``) and the H- opacity
      ``log10 kappa_c = log10 Pe + 2.5 log10 theta + 0.754 theta``;
    * hydrogen: ``- theta chi - log10 kappa_c`` (no metallicity dependence);
    * molecules: ``w_m [Fe/H] + w_a [alpha/Fe] + theta (D - chi) + gravity_power logg``;

    where ``Delta[...]`` is the difference to the reference star (Teff 4750, logg 2.5,
    [Fe/H] = [alpha/Fe] = 0), at which ``S = S_ref``.

    Profiles are pseudo-Voigt (Thompson, Cox & Hastings 1987): Gaussian
    ``sigma_G**2 = k Teff / m + xi**2 / 2`` with microturbulence ``xi``; Lorentzian
    half width ``gamma = 10**log_damping 10**(p_g (logg - 4.44)) (Teff / 5777)**p_T``,
    times ``lambda / 5000 A`` for metal lines (velocity units).

    Parameters
    ----------
    lines : LineList
    labels : mapping or array_like
        Labels (see :func:`simulate_spectra`).

    Returns
    -------
    dict of ndarray, shape (N, L)
        ``S`` (integrated opacity, km/s), ``sigma`` (Gaussian sigma of the
        pseudo-Voigt, km/s), ``hwhm`` (Lorentzian half width of the pseudo-Voigt,
        km/s), ``eta`` (Lorentzian fraction) and ``tau0`` (line-centre optical depth).
    """
    lab = _validate_labels(labels)
    teff, logg, feh, alpha = _labels_columns(lab)
    return _line_parameters(lines, teff, logg, feh, alpha)


def _line_parameters(lines: LineList, teff, logg, feh, alpha):
    """Strength and pseudo-Voigt parameters, (n, L), for (n, 1) label columns (see :func:`line_strengths`)."""
    ref = [np.array([[_REFERENCE_STAR[k]]]) for k in LABEL_NAMES]
    log_n_ref = _log_line_number(lines, *ref)
    log_s = lines.log_strength + _log_line_number(lines, teff, logg, feh, alpha) - log_n_ref
    s = 10.0 ** np.clip(log_s, -12.0, 7.0)

    xi = _microturbulence(teff, logg)
    sigma_g = np.sqrt(_K_OVER_AMU * teff / lines.mass + 0.5 * xi**2)
    is_h = lines.kind == "hydrogen"
    lam_factor = np.where(is_h, 1.0, lines.wavelength / 5000.0)
    gamma = (
        10.0**lines.log_damping
        * lam_factor
        * 10.0 ** (lines.damping_logg_power * (logg - 4.44))
        * (teff / 5777.0) ** lines.damping_teff_power
    )
    f_g = 2.0 * math.sqrt(2.0 * math.log(2.0)) * sigma_g
    f_l = 2.0 * gamma
    f = (
        f_g**5
        + 2.69269 * f_g**4 * f_l
        + 2.42843 * f_g**3 * f_l**2
        + 4.47163 * f_g**2 * f_l**3
        + 0.07842 * f_g * f_l**4
        + f_l**5
    ) ** 0.2
    r = f_l / f
    eta = 1.36603 * r - 0.47719 * r**2 + 0.11116 * r**3
    sigma = f / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    hwhm = 0.5 * f
    tau0 = s * ((1.0 - eta) / (math.sqrt(2.0 * math.pi) * sigma) + eta / (math.pi * hwhm))
    return {"S": s, "sigma": sigma, "hwhm": hwhm, "eta": eta, "tau0": tau0}


def _line_windows(lines: LineList):
    """Label-independent half widths (km/s) of the Gaussian and Lorentzian windows."""
    corners = np.array(np.meshgrid(*[_WINDOW_ENVELOPE[k] for k in LABEL_NAMES], indexing="ij")).reshape(4, -1)
    p = _line_parameters(lines, *(c[:, None] for c in corners))
    s_max = p["S"].max(axis=0)
    sigma_max = p["sigma"].max(axis=0)
    wing = (p["S"] * p["eta"] * p["hwhm"]).max(axis=0)
    w_gauss = 6.0 * sigma_max
    # Lorentzian wings down to tau = 3e-4, at most the line's max_window
    w_lor = np.sqrt(wing / (math.pi * 3e-4))
    w_lor = np.maximum(np.minimum(w_lor, lines.max_window), w_gauss)
    return w_gauss, w_lor, s_max


# --------------------------------------------------------------------------------------
# synthesis
# --------------------------------------------------------------------------------------


@dataclass
class _ArmGrid:
    """Grids of one arm: output pixels, intermediate (FFT) grid and fine grid."""

    u_out: np.ndarray  # output pixel centres, c ln(lambda) (km/s)
    h_out: float
    k: int  # intermediate points per output pixel
    m: int  # fine points per intermediate point
    h_int: float
    h_fine: float
    n_int: int
    j0: int  # intermediate index of the first output pixel
    u_fine0: float  # first fine-grid point

    @property
    def n_fine(self) -> int:
        """Number of fine-grid points."""
        return self.n_int * self.m


def _arm_grid(
    wavelength: np.ndarray, log_step: float, sigma_kernel_min: float, sigma_kernel_max: float, max_shift: float
) -> _ArmGrid:
    """Grids of one arm.

    The intermediate (FFT) grid has ``k`` points per output pixel, at least 4 per
    sigma of the narrowest convolution kernel; the fine grid, on which
    ``exp(-tau)`` is evaluated, has ``m`` points per intermediate point and a step of
    at most ``_FINE_STEP_KMS`` (about the thermal + microturbulent width of heavy
    atoms); both extend beyond the arm by 7 kernel sigmas plus the largest Doppler
    shift, so that the periodic FFT convolution does not wrap around.
    """
    u_out = C_KMS * np.log(wavelength)
    h_out = C_KMS * log_step
    # intermediate (FFT) grid: >= 4 points per sigma of the narrowest kernel
    k = max(1, math.ceil(h_out / (sigma_kernel_min / 4.0) - 1e-9))
    h_int = h_out / k
    m = max(1, math.ceil(h_int / _FINE_STEP_KMS - 1e-9))
    h_fine = h_int / m
    pad = 7.0 * sigma_kernel_max + max_shift + 2.0 * h_out
    n_pad = math.ceil(pad / h_int)
    n_core = (u_out.size - 1) * k + 1
    n_int = scipy.fft.next_fast_len(n_core + 2 * n_pad, real=True)
    u_int0 = u_out[0] - n_pad * h_int
    u_fine0 = u_int0 - 0.5 * (m - 1) * h_fine
    return _ArmGrid(u_out, h_out, k, m, h_int, h_fine, n_int, n_pad, u_fine0)


_CORE_CLASSES = np.unique(np.ceil(4.0 * 1.25 ** np.arange(60)).astype(int))
_WING_TERMS = 3  # terms of the expansion of the far Lorentzian wings


@dataclass
class _OpacityOperator:
    """Label-independent sparse operator that turns line coefficients into tau.

    ``tau(star, fine pixel) = D(star, :) @ matrix`` where the columns of ``D`` are

    * for each group of lines sharing a core half-window of ``c`` fine pixels: the
      exact pseudo-Voigt opacity of every line at its ``2 c + 1`` core pixels;
    * for the far Lorentzian wings (beyond the core, within the line's window):
      ``_WING_TERMS`` coefficients per line, from
      ``1 / (x**2 + h**2) = sum_k (-h**2)**k / x**(2k + 2)`` (relative error
      ``(h / x)**6 < 6e-5`` since the core spans 6 sigma of the widest profile).

    The taper that brings the Lorentzian smoothly to zero at the window edge is part
    of the (fixed) core offsets and wing basis.
    """

    groups: list  # (line indices, x**2 (L_g, W), taper (L_g, W), first column)
    n_lines: int
    wing_col0: int
    n_cols: int
    matrix: object  # scipy.sparse CSR, (n_cols, n_fine)


def _taper(x, w):
    """1 inside ``|x| < w / 2``, cosine roll-off to 0 at ``|x| = w``."""
    t = np.clip((np.abs(x) / w - 0.5) * 2.0, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def _opacity_operator(grid: _ArmGrid, centres_u, w_gauss, w_lor) -> _OpacityOperator:
    """Build the sparse operator of the lines centred at ``centres_u`` (km/s) on the fine grid."""
    import scipy.sparse

    h = grid.h_fine
    n_fine = grid.n_fine
    n_lines = centres_u.size
    q_centre = np.rint((centres_u - grid.u_fine0) / h).astype(np.int64)
    c_need = np.ceil(w_gauss / h).astype(np.int64)
    cls = _CORE_CLASSES[np.minimum(np.searchsorted(_CORE_CLASSES, c_need), _CORE_CLASSES.size - 1)]
    cls = np.maximum(cls, c_need)
    rows, cols, vals = [], [], []
    groups = []
    col0 = 0
    for c in np.unique(cls):
        idx = np.flatnonzero(cls == c)
        offs = np.arange(-c, c + 1)
        q = q_centre[idx, None] + offs[None, :]
        x = grid.u_fine0 + h * q - centres_u[idx, None]
        taper = _taper(x, w_lor[idx, None])
        n_w = offs.size
        r = col0 + np.arange(idx.size * n_w).reshape(idx.size, n_w)
        ok = (q >= 0) & (q < n_fine)
        rows.append(r[ok])
        cols.append(q[ok])
        vals.append(np.ones(int(ok.sum())))
        groups.append((idx, x * x, taper, col0))
        col0 += idx.size * n_w
    wing_col0 = col0
    core_half = cls  # wings start beyond the core window
    # far wings: positions with core_half < |q - q_centre| and |x| <= w_lor
    n_wing = np.maximum(np.floor(w_lor / h).astype(np.int64) + 1 - core_half, 0)
    total = int(n_wing.sum())
    if total:
        line_of = np.repeat(np.arange(n_lines), n_wing)
        start = np.cumsum(n_wing) - n_wing
        step = np.arange(total) - np.repeat(start, n_wing) + np.repeat(core_half, n_wing) + 1
        for sign in (-1, 1):
            q = q_centre[line_of] + sign * step
            x = grid.u_fine0 + h * q - centres_u[line_of]
            ok = (q >= 0) & (q < n_fine) & (np.abs(x) <= w_lor[line_of])
            base = _taper(x[ok], w_lor[line_of[ok]]) / x[ok] ** 2
            x2 = x[ok] ** 2
            for k in range(_WING_TERMS):
                rows.append(wing_col0 + k * n_lines + line_of[ok])
                cols.append(q[ok])
                vals.append(base / x2**k)
    n_cols = wing_col0 + _WING_TERMS * n_lines
    matrix = scipy.sparse.csr_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_cols, n_fine)
    )
    # transposed layout: tau.T = matrix.T @ D.T runs over contiguous star vectors
    matrix_t = matrix.T.tocsr()
    return _OpacityOperator(groups, n_lines, wing_col0, n_cols, matrix_t)


def _absorption_fine(op: _OpacityOperator, params):
    """``1 - exp(-tau)`` on the fine grid, shape (n, n_fine), from line parameters."""
    n = params["S"].shape[0]
    # per-line rows, stars last: (L, n)
    a_g = (params["S"] * (1.0 - params["eta"]) / (math.sqrt(2.0 * math.pi) * params["sigma"])).T
    b_g = (-0.5 / params["sigma"] ** 2).T
    a_l = (params["S"] * params["eta"] * params["hwhm"] / math.pi).T
    hw2 = (params["hwhm"] ** 2).T
    d = np.empty((op.n_cols, n))  # transposed coefficient matrix D.T
    for idx, x2, taper, col0 in op.groups:
        x2_ = x2[:, :, None]
        core = np.exp(b_g[idx, None, :] * x2_)
        core *= a_g[idx, None, :]
        core += a_l[idx, None, :] * taper[:, :, None] / (x2_ + hw2[idx, None, :])
        d[col0 : col0 + core.shape[0] * core.shape[1]] = core.reshape(-1, n)
    coef = np.ascontiguousarray(a_l)
    for k in range(_WING_TERMS):
        d[op.wing_col0 + k * op.n_lines : op.wing_col0 + (k + 1) * op.n_lines] = coef
        coef = coef * (-hw2)
    tau = op.matrix @ d  # (n_fine, n)
    np.negative(tau, out=tau)
    np.expm1(tau, out=tau)
    np.negative(tau, out=tau)  # 1 - exp(-tau)
    return np.ascontiguousarray(tau.T)


def _synthesise_arm(grid: _ArmGrid, lines: LineList, labels_cols, sigma_kernel, shift_u, progress=None):
    """Continuum-normalised flux (N, P_arm) of one arm; rest-frame physics, shifted."""
    teff, logg, feh, alpha = labels_cols
    n = teff.shape[0]
    p_out = grid.u_out.size
    out = np.empty((n, p_out))
    # lines that can touch the fine grid
    centres_u = C_KMS * np.log(lines.wavelength)
    w_gauss, w_lor, _ = _line_windows(lines)
    u_lo = grid.u_fine0
    u_hi = grid.u_fine0 + grid.h_fine * (grid.n_fine - 1)
    near = (centres_u + w_lor >= u_lo) & (centres_u - w_lor <= u_hi)
    lines_n = lines.select(near)
    op = _opacity_operator(grid, centres_u[near], w_gauss[near], w_lor[near])
    chunk = max(1, min(n, _CHUNK_ELEMENTS // (2 * grid.n_fine + op.n_cols)))
    logger.debug(
        "arm %.0f-%.0f A: %d pixels, %d lines, fine step %.3f km/s (%d points), operator %d x %d (%d nonzeros), "
        "%d stars per chunk",
        math.exp(grid.u_out[0] / C_KMS),
        math.exp(grid.u_out[-1] / C_KMS),
        p_out,
        len(lines_n),
        grid.h_fine,
        grid.n_fine,
        op.n_cols,
        grid.n_fine,
        op.matrix.nnz,
        chunk,
    )
    freq = scipy.fft.rfftfreq(grid.n_int, d=grid.h_int)
    box_var = (grid.m**2 - 1) * grid.h_fine**2 / 12.0
    pix = grid.j0 + grid.k * np.arange(p_out)
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        params = _line_parameters(lines_n, teff[rows], logg[rows], feh[rows], alpha[rows])
        absorb = _absorption_fine(op, params)
        if grid.m > 1:
            absorb = absorb.reshape(absorb.shape[0], grid.n_int, grid.m).mean(axis=2)
        spec = scipy.fft.rfft(absorb, axis=1)
        del absorb
        # instrument + macroturbulence Gaussian, pixel box, Doppler shift
        var = np.maximum(sigma_kernel[rows, None] ** 2 - box_var, 0.0)
        spec *= np.exp(-2.0 * math.pi**2 * var * freq**2) * np.sinc(freq * grid.h_out)
        if np.any(shift_u[rows] != 0.0):
            phase = -2.0 * math.pi * freq * shift_u[rows, None]
            spec *= np.cos(phase) + 1j * np.sin(phase)
        conv = scipy.fft.irfft(spec, n=grid.n_int, axis=1)
        out[rows] = 1.0 - conv[:, pix]
        if progress is not None:
            progress.update(rows.stop - rows.start)
    return out


def _synthesise(instrument: Instrument, lines: LineList, labels_cols, rv, progressbar=False):
    """Noise-free continuum-normalised flux (N, P) in the observed frame."""
    teff, logg, _, _ = labels_cols
    n = teff.shape[0]
    sigma_inst = C_KMS / (instrument.resolving_power * 2.0 * math.sqrt(2.0 * math.log(2.0)))
    sigma_mac = _macroturbulence(teff[:, 0], logg[:, 0])
    sigma_kernel = np.sqrt(sigma_inst**2 + sigma_mac**2)
    shift_u = C_KMS * np.log1p(rv / C_KMS)
    max_shift = float(np.max(np.abs(shift_u))) if n else 0.0
    sigma_kernel_min = math.sqrt(sigma_inst**2 + 1.0)  # macroturbulence sigma is within [1, 6]
    sigma_kernel_max = math.sqrt(sigma_inst**2 + 6.0**2)
    pieces = []
    progress = None
    if progressbar:
        from tqdm import tqdm

        unit = "star" if len(instrument.arms) == 1 else "star-arm"
        progress = tqdm(total=n * len(instrument.arms), desc=f"simulating {instrument.name}", unit=unit)
    try:
        for wl in instrument.arm_grids():
            grid = _arm_grid(wl, instrument.log_step, sigma_kernel_min, sigma_kernel_max, max_shift)
            pieces.append(_synthesise_arm(grid, lines, labels_cols, sigma_kernel, shift_u, progress))
    finally:
        if progress is not None:
            progress.close()
    return np.concatenate(pieces, axis=1)
