"""Survey of Surveys homogenisation: put many surveys' label catalogues on one reference
scale (quantile-boosted offsets with conformal intervals, chaining through a graph of
surveys, Monte Carlo errors, split-normal combination). See ``docs/guides/homogenise.md``.

xgboost, mapie and scikit-learn are needed to fit (the ``homogenise`` extra); they are
imported only when a model is fitted or loaded.
"""

from bayescannon.homogenise.config import (
    HomogeniseConfig,
    SurveyConfig,
    SurveyData,
    config_from_dict,
    load_config,
    prepare_survey,
    select_rows,
)
from bayescannon.homogenise.graph import REF, edge_costs, robust_scatter, survey_paths
from bayescannon.homogenise.homogeniser import Homogeniser, stack_surveys
from bayescannon.homogenise.offsets import DEFAULT_QUANTILES, LEVELS, OffsetModel, pinball_loss
from bayescannon.homogenise.output import HomogFlag, package_versions, unified_table
from bayescannon.homogenise.propagate import propagate, propagate_block
from bayescannon.homogenise.splitnormal import (
    combine_chained,
    combine_split_normal,
    fit_split_normal,
    split_normal_nll,
    split_normal_ppf,
    split_normal_sample,
)

__all__ = [
    "DEFAULT_QUANTILES",
    "LEVELS",
    "REF",
    "HomogFlag",
    "HomogeniseConfig",
    "Homogeniser",
    "OffsetModel",
    "SurveyConfig",
    "SurveyData",
    "combine_chained",
    "combine_split_normal",
    "config_from_dict",
    "edge_costs",
    "fit_split_normal",
    "load_config",
    "package_versions",
    "pinball_loss",
    "prepare_survey",
    "propagate",
    "propagate_block",
    "robust_scatter",
    "select_rows",
    "split_normal_nll",
    "split_normal_ppf",
    "split_normal_sample",
    "stack_surveys",
    "survey_paths",
    "unified_table",
]
