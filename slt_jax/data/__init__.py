"""Synthetic data generators (deep linear network teachers, ...)."""

from slt_jax.data.dln import (
    DLNTeacher,
    dln_problem,
    make_dln_data,
    make_dln_teacher,
    minimal_rank_factorization,
    random_dln_widths,
)

__all__ = [
    "DLNTeacher",
    "dln_problem",
    "make_dln_data",
    "make_dln_teacher",
    "minimal_rank_factorization",
    "random_dln_widths",
]
