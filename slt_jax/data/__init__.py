"""Synthetic data generators (deep linear network teachers, ...)."""

from slt_jax.data.dln import (
    DLNTeacher,
    dln_problem,
    make_dln_data,
    make_dln_teacher,
    minimal_rank_factorization,
    random_dln_widths,
)
from slt_jax.data.toy import (
    ToyProblem,
    linear_regression_problem,
    polynomial_problem,
    trained_mlp_problem,
)

__all__ = [
    "DLNTeacher",
    "ToyProblem",
    "dln_problem",
    "linear_regression_problem",
    "make_dln_data",
    "make_dln_teacher",
    "minimal_rank_factorization",
    "polynomial_problem",
    "random_dln_widths",
    "trained_mlp_problem",
]

from slt_jax.data.synthetic import (  # noqa: E402
    dmmse_predictions,
    make_icl_data,
    make_icl_tasks,
    make_induction_data,
    make_tms_data,
    ridge_predictions,
)

__all__ += [
    "dmmse_predictions",
    "make_icl_data",
    "make_icl_tasks",
    "make_induction_data",
    "make_tms_data",
    "ridge_predictions",
]

from slt_jax.data.hierarchical import HierarchicalData, make_hierarchical_data  # noqa: E402

__all__ += ["HierarchicalData", "make_hierarchical_data"]
