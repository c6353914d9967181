"""Plots (matplotlib), callable from notebooks and written by the CLI. Nothing here is
used by the numerical core.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no
global figure registry, no backend switch): show it in a notebook by evaluating it,
write it with :func:`save_figure`.

* :func:`one_to_one` — inferred vs reference labels with bias and scatter annotated.
* :func:`scatter_vs_snr` — bias and scatter in S/N bins (Ho+2017 Fig. 8).
* :func:`binned_statistics_plot` — bias and scatter in bins of any variable.
* :func:`kiel_diagram` — log g vs Teff, before / after side by side.
* :func:`coefficient_spectra` — leading (linear) coefficients θ_λ per label with known
  lines marked (Ho+2017 Fig. 5).
* :func:`residual_band` — per-pixel median residual and 16–84 % band over a set of
  stars (Nandakumar+2022 Figs 5–6).
* :func:`alpha_vs_feh` — [α/Fe] or [α/M] vs [Fe/H].
* :func:`precision_vs_snr` — repeat-observation precision and its exponential fit.
* :func:`pipeline_comparison` — a point-estimate pipeline's values in our posteriors:
  quantile histograms (uniform when consistent), z against S/N and against each label.
* :func:`coverage_map` — coverage of the calibrated intervals per S/N quintile and per
  quintile of each label, with the target band shaded.
* :func:`coverage_curve` — empirical against nominal coverage (calibration curve);
  :func:`calibrated_interval_levels` gives it the levels of calibrated (non-Gaussian) intervals.
* :func:`zscore_histogram` — standardised residuals with N(0, 1) drawn.
* :func:`errors_vs_snr` — quoted errors against S/N.
* :func:`corner_posterior` — corner plot of one star's posterior, truth and Laplace marked.
* :func:`corner_from_tree` — the same for one star of a posterior ``DataTree``.
* :func:`label_distributions` — histograms of labels (a catalogue's), axes with units.
* :func:`survey_one_to_one` — transferred labels against the survey's own.

Axis labels come from the one label-metadata table, :data:`bayescannon.results.LABEL_METADATA`.
"""

from bayescannon.plots.labels import (
    APOGEE_LINES,
    alpha_vs_feh,
    binned_statistics_plot,
    coefficient_spectra,
    coverage_map,
    kiel_diagram,
    label_distributions,
    new_figure,
    one_to_one,
    pipeline_comparison,
    precision_vs_snr,
    residual_band,
    save_figure,
    scatter_vs_snr,
)
from bayescannon.plots.uncertainty import (
    calibrated_interval_levels,
    corner_from_tree,
    corner_posterior,
    coverage_curve,
    errors_vs_snr,
    interval_levels,
    survey_one_to_one,
    zscore_histogram,
)

__all__ = [
    "one_to_one",
    "scatter_vs_snr",
    "binned_statistics_plot",
    "kiel_diagram",
    "coefficient_spectra",
    "residual_band",
    "alpha_vs_feh",
    "precision_vs_snr",
    "coverage_map",
    "pipeline_comparison",
    "coverage_curve",
    "zscore_histogram",
    "errors_vs_snr",
    "corner_posterior",
    "corner_from_tree",
    "survey_one_to_one",
    "label_distributions",
    "interval_levels",
    "calibrated_interval_levels",
    "new_figure",
    "save_figure",
    "APOGEE_LINES",
]
