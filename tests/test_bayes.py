"""Label posteriors (PyMC/nutpie), θ-uncertainty propagation and ArviZ diagnostics.

Known truth: spectra simulated from a quadratic model with known θ and labels. One
compiled posterior per session (compiling is the expensive part); sampling is cheap.
"""

import numpy as np
import pytest
import xarray as xr

from bayescannon import CannonModel
from bayescannon.bayes import LabelPosterior, label_log_likelihood, star_statistics
from bayescannon.core.likelihood import log_likelihood
from bayescannon.core.vectorizer import PolynomialVectorizer
from bayescannon.errors import SamplingError

NAMES = ["A", "B", "C"]
NOISE = 0.01


def _simulate(rng, theta, n, lo=-0.5, hi=0.5):
    vec = PolynomialVectorizer(NAMES, 2)
    x = rng.uniform(lo, hi, (n, len(NAMES)))
    flux = vec(x) @ theta.T + NOISE * rng.standard_normal((n, theta.shape[0]))
    return flux, np.full(flux.shape, NOISE**-2), x


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(42)
    vec = PolynomialVectorizer(NAMES, 2)
    theta = rng.normal(scale=0.05, size=(150, vec.n_terms))
    theta[:, 0] = 1.0
    flux, ivar, x = _simulate(rng, theta, 300)
    model = CannonModel(NAMES, random_state=0).fit(flux, ivar, x)
    post = LabelPosterior(model).compile()
    return model, post, theta, rng


def test_label_log_likelihood_matches_pixel_likelihood(setup):
    model, _, theta, rng = setup
    flux, ivar, _ = _simulate(rng, theta, 4)
    A, b, c, n_pix, _ = star_statistics(model, flux, ivar)
    x = rng.uniform(-0.5, 0.5, (4, 3))
    v = model.vectorizer(x)
    got = label_log_likelihood(A, b, c, v)
    pix = log_likelihood(flux, ivar, v @ model.theta_.T, model.s2_[None, :], axis=1)
    w = ivar / (1 + ivar * model.s2_)
    const = 0.5 * np.sum(np.log(w) - np.log(2 * np.pi), axis=1)
    np.testing.assert_allclose(got + const, pix, rtol=1e-9)


def test_label_log_likelihood_numpy_equals_pytensor(setup):
    import pytensor.tensor as pt

    model, _, theta, rng = setup
    flux, ivar, _ = _simulate(rng, theta, 3)
    A, b, c, n_pix, kap = star_statistics(model, flux, ivar)
    x = rng.uniform(-0.5, 0.5, (3, 3))
    eps = rng.uniform(0, 0.1, 3)
    want = label_log_likelihood(A, b, c, model.vectorizer(x), n_pix, eps)
    xt = pt.as_tensor(x)
    got = label_log_likelihood(A, b, c, model.vectorizer(xt, xp=pt), n_pix, eps, xp=pt).eval()
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_posterior_recovers_truth_and_matches_laplace(setup):
    model, post, theta, rng = setup
    flux, ivar, x = _simulate(rng, theta, 4)
    tree = post.sample(flux, ivar, draws=1000, tune=1000, chains=4, seed=1)
    diag = tree["diagnostics"].to_dataset()
    assert diag["converged"].values.all(), diag[["max_r_hat", "n_divergent", "min_ess"]]
    truth = x  # the simulated labels are the physical labels of the model
    z = (diag["mean"].values - truth) / diag["sd"].values
    assert np.all(np.abs(z) < 4.5)  # 4.5σ over 12 numbers
    # θ known well (300 stars): posterior sd ≈ Laplace sd, up to MC error of the sd (ESS > 400)
    ratio = diag["sd_ratio"].values
    assert np.all((ratio > 0.85) & (ratio < 1.2)), ratio


def test_datatree_layout_and_roundtrip(setup, tmp_path):
    from bayescannon.bayes.diagnostics import load_posterior, save_posterior, summary_table

    model, post, theta, rng = setup
    flux, ivar, _ = _simulate(rng, theta, 2)
    tree = post.sample(flux, ivar, ids=["s1", "s2"], draws=200, tune=200, chains=2, seed=2)
    assert set(tree.children) >= {"posterior", "sample_stats", "constant_data", "diagnostics"}
    lab = tree["posterior"]["labels"]
    assert lab.dims == ("chain", "draw", "star", "label_name")
    assert list(lab["label_name"].values) == NAMES and list(lab["star"].values) == ["s1", "s2"]
    table = summary_table(tree)
    assert len(table) == 2 * len(NAMES) and {"r_hat", "ess_bulk", "laplace_sd", "converged"} <= set(table.columns)
    for suffix in (".nc", ".zarr"):
        path = save_posterior(tree, tmp_path / f"post{suffix}")
        back = load_posterior(path)
        xr.testing.assert_allclose(back["posterior"].to_dataset(), tree["posterior"].to_dataset())


def test_unconverged_sampling_is_reported(setup):
    model, post, theta, rng = setup
    flux, ivar, _ = _simulate(rng, theta, 1)
    tree = post.sample(flux, ivar, draws=20, tune=20, chains=2, seed=3)  # far too short: ESS < 100
    diag = tree["diagnostics"].to_dataset()
    assert not diag["converged"].values.any()
    assert diag["min_ess"].values[0] < diag.attrs["min_ess"]


def test_star_without_pixels_raises(setup):
    model, post, theta, rng = setup
    flux, ivar, _ = _simulate(rng, theta, 2)
    ivar[1] = 0.0
    with pytest.raises(SamplingError, match="no usable pixel"):
        post.sample(flux, ivar, draws=50, tune=50, chains=1)


def test_theta_uncertainty_widens_far_stars(setup):
    from bayescannon.core.uncertainty import epsilon, leverage

    model, _, theta, rng = setup
    near = np.zeros((1, 3))
    far = np.full((1, 3), 1.5)  # three training widths from the centre
    h_near, h_far = leverage(model, near)[0], leverage(model, far)[0]
    # at the centre the leverage is ~ (terms / stars); far outside it grows by orders of magnitude
    assert h_near < 3 * model.vectorizer.n_terms / model.n_training_stars_
    assert h_far > 30 * h_near
    ivar = np.full((2, 150), NOISE**-2)
    eps = epsilon(model, np.vstack([near, far]), ivar)
    assert eps[1] > 30 * eps[0] > 0


def test_plots(setup):
    import matplotlib

    matplotlib.use("Agg")
    from bayescannon.bayes.diagnostics import plot_corner, plot_coverage, plot_posterior_vs_laplace
    from bayescannon.plots import corner_from_tree

    model, post, theta, rng = setup
    flux, ivar, x = _simulate(rng, theta, 2)
    tree = post.sample(flux, ivar, draws=200, tune=200, chains=2, seed=4)
    fig = plot_posterior_vs_laplace(tree, 0)
    assert len(fig.axes) == 3
    with pytest.warns(FutureWarning, match="corner_from_tree"):  # deprecated: the plots one replaces it
        pc = plot_corner(tree, "star000001")
    assert hasattr(pc, "savefig")
    fig = corner_from_tree(tree, "star000001", truth=x[1])
    axes = np.array(fig.axes).reshape(3, 3)
    ndraw = tree.posterior.sizes["chain"] * tree.posterior.sizes["draw"]
    assert axes[1, 0].collections[0].get_offsets().shape == (ndraw, 2)
    assert any(ln.get_label() == "Laplace" for ln in axes[0, 0].lines)
    d = rng.standard_normal((500, 3))
    fig2 = plot_coverage(d, np.ones((500, 3)), NAMES)
    assert len(fig2.axes[0].lines) >= 3


def test_full_sampler_statistics_serve_arviz(setup):
    """Every per-draw sampler statistic is kept: az.bfmi and az.plot_energy work."""
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    from bayescannon.bayes.diagnostics import plot_energy

    model, post, theta, rng = setup
    flux, ivar, _ = _simulate(rng, theta, 2)
    tree = post.sample(flux, ivar, ids=["p", "q"], draws=300, tune=300, chains=2, seed=5)
    stats = tree["sample_stats"].to_dataset()
    want = {"energy", "energy_error", "step_size", "tree_depth", "n_steps", "diverging", "maxdepth_reached", "lp"}
    assert want <= set(stats.data_vars), set(stats.data_vars)
    assert stats["energy"].dims == ("chain", "draw", "star")
    # the two stars were sampled separately: their energies differ
    assert not np.allclose(stats["energy"].sel(star="p"), stats["energy"].sel(star="q"))
    assert np.all(stats["step_size"].values > 0) and np.all(stats["n_steps"].values >= 1)
    bf = az.bfmi(tree)
    bf = (bf["sample_stats"] if "sample_stats" in bf.children else bf).to_dataset()["energy"]
    assert bf.sizes == {"star": 2, "chain": 2}
    # a near-Gaussian 3-d posterior is explored well: E-BFMI far above the 0.3 alarm level
    assert np.all(bf.values > 0.5), bf.values
    diag = tree["diagnostics"].to_dataset()
    np.testing.assert_allclose(diag["min_bfmi"].values, bf.min("chain").sel(star=["p", "q"]).values)
    pc = plot_energy(tree, "q")
    axes = np.asarray(pc.viz["plot"].values).ravel()
    assert len(axes) == 2 and all(len(ax.collections) + len(ax.lines) > 0 for ax in axes)


@pytest.mark.slow
def test_batched_sampling_and_cli(setup, tmp_path):
    from bayescannon.cli import main
    from bayescannon.io import write_spectra
    from bayescannon.spectra import make_spectra

    model, _, theta, rng = setup
    flux, ivar, x = _simulate(rng, theta, 3)
    batched = LabelPosterior(model, batch_size=2)
    tree = batched.sample(flux, ivar, draws=1000, tune=1000, chains=4)
    diag = tree["diagnostics"].to_dataset()
    assert diag.sizes["star"] == 3 and diag["converged"].values.all()
    truth = x  # the simulated labels are the physical labels of the model
    assert np.all(np.abs((diag["mean"].values - truth) / diag["sd"].values) < 4.5)
    model.save(tmp_path / "m.nc")
    ds = make_spectra(np.arange(150.0) + 15000.0, flux, ivar, ids=["a", "b", "c"])
    write_spectra(ds, tmp_path / "s.nc", overwrite=True)
    rc = main(
        [
            "sample",
            str(tmp_path / "m.nc"),
            str(tmp_path / "s.nc"),
            "-o",
            str(tmp_path / "p.nc"),
            "--ids",
            "a",
            "c",
            "--summary",
            str(tmp_path / "t.csv"),
        ]
    )
    assert rc == 0 and (tmp_path / "p.nc").exists() and (tmp_path / "t.csv").exists()


def test_calibrated_posterior_summary_applies_the_learned_bias(setup):
    import copy

    from bayescannon.bayes.calibration import fit_calibration
    from bayescannon.bayes.diagnostics import summarize
    from bayescannon.core import scaling
    from bayescannon.core.uncertainty import calibration_bias

    model, post, theta, rng = setup
    flux, ivar, _ = _simulate(rng, theta, 3)
    tree = post.sample(flux, ivar, draws=300, tune=300, chains=2, seed=3)
    # a calibration learned from residuals with a known constant offset (physical units)
    n = 3000
    offset = np.array([0.02, -0.03, 0.05])
    x = scaling.scale(rng.uniform(-0.5, 0.5, (n, 3)), model.label_offset_, model.label_scale_)
    fvar = np.full((n, 3), 0.01**2)
    cal, _ = fit_calibration(offset + 0.01 * rng.standard_normal((n, 3)), fvar, np.zeros(n), x, NAMES)
    calibrated = copy.deepcopy(model)
    calibrated.calibration_ = cal | {"source": "test"}
    diag = summarize(tree, model=calibrated)
    plain = tree["diagnostics"].to_dataset()
    assert "label_bias" not in plain  # an uncalibrated model: nothing shifted
    # the learned offset is recovered (sd of its estimate 0.01/√3000 ≈ 2e-4; 0.003 is > 10σ)
    np.testing.assert_allclose(diag["label_bias"].values, np.broadcast_to(offset, (3, 3)), atol=0.003)
    np.testing.assert_allclose(diag["calibrated_mean"].values, diag["mean"].values - diag["label_bias"].values)
    # the bias is evaluated at the MAP labels (what the calibration saw), not at the mean
    xmap = scaling.scale(tree["constant_data"]["map_labels"].values, model.label_offset_, model.label_scale_)
    np.testing.assert_allclose(diag["label_bias"].values, calibration_bias(cal, xmap))


@pytest.mark.parametrize("prior", ["uniform", "normal"])
def test_compiled_kernel_equals_numpy_core_and_its_gradient_is_exact(setup, prior):
    # the sampler's numba kernel (bayes.labelkernel) must be the density of the PyMC model:
    # the core's label_log_likelihood (numpy) + the prior on u = u_MAP + L z, with θ uncertainty
    from bayescannon.bayes import labelkernel

    model, _, theta, rng = setup
    post = LabelPosterior(model, batch_size=2, prior=prior)
    flux, ivar, _ = _simulate(rng, theta, 2)
    A, b, c, n_pix, kap = star_statistics(model, flux, ivar)
    kap = kap + 0.05  # make the θ-uncertainty term matter
    k = len(NAMES)
    u0 = rng.normal(scale=0.5, size=(2, k))
    l_ = np.tril(rng.normal(scale=0.3, size=(2, k, k))) + 0.5 * np.eye(k)
    const = post._constants
    z = rng.normal(size=2 * k)
    args = (A, b, c, n_pix.astype(float), kap, const["g0inv"], u0, l_, const["lower"], const["upper"])
    parent, last = model.vectorizer.parent, model.vectorizer.last

    def numpy_logp(zz):
        u = u0 + np.einsum("skj,sj->sk", l_, zz.reshape(2, k))
        if prior == "uniform":
            lo, hi = const["lower"], const["upper"]
            x = lo + (hi - lo) / (1 + np.exp(-u))
            lp = np.sum(-np.logaddexp(0, -u) - np.logaddexp(0, u))
        else:
            x = u
            lp = np.sum(-0.5 * (u / const["upper"]) ** 2)
        v = model.vectorizer(x)
        eps = kap * np.einsum("st,tu,su->s", v, const["g0inv"], v)
        return lp + label_log_likelihood(A, b, c, v, n_pix, eps).sum(), x

    got, grad = labelkernel.logp_grad(z, *args, parent, last, prior == "uniform")
    want, x = numpy_logp(z)
    np.testing.assert_allclose(got, want, rtol=1e-11)
    # central differences: error O(h²) relative to the curvature (χ² ~ 1e5 per unit label)
    h = 1e-5
    fd = np.array([(numpy_logp(z + h * e)[0] - numpy_logp(z - h * e)[0]) / (2 * h) for e in np.eye(2 * k)])
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())
    # and the labels written to the trace are those x, in physical units
    phys = labelkernel.labels_from_z(
        z, u0, l_, const["lower"], const["upper"], const["label_offset"], const["label_scale"], prior == "uniform"
    )
    np.testing.assert_allclose(phys, x * model.label_scale_ + model.label_offset_, rtol=1e-12)


def test_c_callbacks_equal_the_kernel_on_the_packed_buffer(setup):
    """nutpie's C callbacks read the packed buffer in the layout ``pack`` writes: the same
    value and gradient as the kernel called on the arrays (bit for bit), and the labels."""
    import ctypes

    from bayescannon.bayes import labelkernel

    model, _, theta, rng = setup
    post = LabelPosterior(model, batch_size=2)
    flux, ivar, _ = _simulate(rng, theta, 2)
    A, b, c, n_pix, kap = star_statistics(model, flux, ivar)
    k = len(NAMES)
    d = post._constants | {
        "A": A,
        "b": b,
        "c": c,
        "n_pix": n_pix.astype(float),
        "kappa": kap + 0.05,
        "u_map": rng.normal(scale=0.5, size=(2, k)),
        "chol": np.tril(rng.normal(scale=0.3, size=(2, k, k))) + 0.5 * np.eye(k),
    }
    buf = post._pack(d)
    logp_c, expand_c = labelkernel.c_callbacks()
    parent, last = model.vectorizer.parent, model.vectorizer.last
    dbl = ctypes.POINTER(ctypes.c_double)
    for _ in range(3):
        z = rng.normal(size=2 * k)
        want, want_grad = labelkernel.logp_grad(
            z,
            d["A"],
            d["b"],
            d["c"],
            d["n_pix"],
            d["kappa"],
            d["g0inv"],
            d["u_map"],
            d["chol"],
            d["lower"],
            d["upper"],
            parent,
            last,
            True,
        )
        grad, value = np.zeros(2 * k), np.zeros(1)
        rc = logp_c.ctypes(
            2 * k, z.ctypes.data_as(dbl), grad.ctypes.data_as(dbl), value.ctypes.data_as(dbl), buf.ctypes.data
        )
        assert rc == 0
        assert value[0] == want and np.array_equal(grad, want_grad)
        labels = np.zeros(2 * k)
        assert expand_c.ctypes(2 * k, 2 * k, z.ctypes.data_as(dbl), labels.ctypes.data_as(dbl), buf.ctypes.data) == 0
        phys = labelkernel.labels_from_z(
            z, d["u_map"], d["chol"], d["lower"], d["upper"], d["label_offset"], d["label_scale"], True
        )
        np.testing.assert_array_equal(labels.reshape(2, k), phys)
    # a wrong dimension is refused, not read past the buffer
    assert (
        logp_c.ctypes(3, z.ctypes.data_as(dbl), grad.ctypes.data_as(dbl), value.ctypes.data_as(dbl), buf.ctypes.data)
        == -1
    )


def test_fast_sampler_agrees_with_laplace_on_a_high_snr_star(setup):
    """At high S/N, θ fixed (no θ term) and a flat prior, the posterior is the Gaussian of
    the Laplace approximation: posterior means within Monte-Carlo error of the MAP, posterior
    sd within Monte-Carlo error of the Laplace sd, R-hat ≤ 1.01."""
    model, _, theta, rng = setup
    vec = PolynomialVectorizer(NAMES, 2)
    x = rng.uniform(-0.3, 0.3, (3, len(NAMES)))
    noise = NOISE / 5  # S/N 500: the curvature of v(ℓ) over ±1σ is ~1e-3 of σ
    flux = vec(x) @ theta.T + noise * rng.standard_normal((3, theta.shape[0]))
    ivar = np.full(flux.shape, noise**-2)
    post = LabelPosterior(model, propagate_theta=False)
    tree = post.sample(flux, ivar, draws=1000, tune=1000, chains=4, seed=7)
    diag = tree["diagnostics"].to_dataset()
    assert np.all(diag["r_hat"].values <= 1.01), diag["r_hat"].values
    # NUTS's bulk ESS exceeds the draws for means (antithetic steps) but not for second
    # moments: the conservative ESS is the smallest of bulk, tail and the number of draws
    ess = np.minimum(np.minimum(diag["ess_bulk"].values, diag["ess_tail"].values), 4000)
    # MC error of a mean: sd/√ESS; of an sd: ≈ sd/√(2 ESS) (Gaussian); 4σ over 9 numbers each
    z_mean = (diag["mean"].values - diag["map"].values) / (diag["sd"].values / np.sqrt(ess))
    assert np.all(np.abs(z_mean) < 4.0), z_mean
    z_sd = (diag["sd_ratio"].values - 1.0) * np.sqrt(2 * ess)
    assert np.all(np.abs(z_sd) < 4.0), z_sd
