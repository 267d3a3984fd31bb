r"""The local-sampling benchmark behind ``slt-jax bench`` and ``benchmarks/dln_suite.py``.

Deep linear networks (DLNs) are singular models whose learning coefficient is known in closed
form (Aoyagi 2024, :func:`slt_jax.truth.deep_linear_network`), so an LLC estimator can be
checked against the truth. The protocol is docs/mathematics.md §7 (Furman & Lau, arXiv 2402.03698): a random
teacher (Xavier-normal layers, each with probability 1/2 cut to a random rank), refactored so
that every layer has the product's rank (``make_dln_teacher(..., minimal_rank=True)``: there the
*local* coefficient is Aoyagi's λ), inputs ``x ~ U[-10, 10]``, noise-free targets.

Two tables come out of one set of runs:

* the **DLN suite**: :func:`slt_jax.estimate_llc` with its defaults (SGHMC, calibrated step
  size) per instance; relative error :math:`\hat\lambda/\lambda - 1` and the median of its
  absolute value;
* the **sampler comparison** in the spirit of the local-sampling benchmark of
  arXiv 2507.21449: SGLD, RMSProp-SGLD, Adam-SGLD, SGHMC and SGNHT on the same instances,
  each at its calibrated step size (``estimate_llc(sampler=name)``): median and maximum
  absolute relative error and wall time.

Wall times include calibration and compilation (the first run of a sampler compiles its
program; later instances of the same shapes reuse it).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

__all__ = [
    "ALL_SAMPLERS",
    "PARAMETER_BINS",
    "SIZES",
    "BenchmarkSize",
    "format_report",
    "run_benchmark",
    "run_instance",
    "suite_instances",
    "summarize",
]

#: two instances per parameter-count bin: ``benchmarks/dln_suite.py``'s 12 instances
PARAMETER_BINS = (
    (100, 300),
    (300, 1_000),
    (1_000, 3_000),
    (3_000, 10_000),
    (10_000, 30_000),
    (30_000, 100_000),
)
#: every sampler family, the default (SGHMC) first
ALL_SAMPLERS = ("sghmc", "sgld", "rmsprop_sgld", "adam_sgld", "sgnht")


class BenchmarkSize(NamedTuple):
    """The instances and run lengths of one ``slt-jax bench --size``.

    Attributes:
      name: ``"tiny"``, ``"small"`` or ``"medium"``.
      description: one line for the report.
      parameter_bins: ``((low, high), ...)`` parameter-count bins the architectures are drawn
        from (:func:`suite_instances`), or ``None`` when ``fixed_widths`` is used.
      per_bin: instances per bin.
      fixed_widths: explicit architectures (one instance each), used when
        ``parameter_bins`` is ``None``.
      num_samples: ``n``, training examples per instance.
      num_chains, num_draws: passed to :func:`slt_jax.estimate_llc` (``None``: its default).
    """

    name: str
    description: str
    parameter_bins: tuple | None
    per_bin: int
    fixed_widths: tuple
    num_samples: int
    num_chains: int | None
    num_draws: int | None


SIZES = {
    "tiny": BenchmarkSize(
        "tiny", "2 teachers of a [5, 4, 6] DLN, n = 2,000, 4 chains x 500 draws (a smoke test)",
        None, 0, ((5, 4, 6), (5, 4, 6)), 2_000, 4, 500,
    ),
    "small": BenchmarkSize(
        "small", "4 DLNs of 100-10k parameters, n = 10,000, 4 chains x 2,000 draws",
        PARAMETER_BINS[:4], 1, (), 10_000, 4, 2_000,
    ),
    "medium": BenchmarkSize(
        "medium",
        "the README's 8 DLNs (100-10k parameters), n = 10,000, estimate_llc's defaults",
        PARAMETER_BINS[:4], 2, (), 10_000, None, None,
    ),
}


def suite_instances(
    seed: int = 0, per_bin: int = 2, parameter_bins: Sequence[tuple[int, int]] = PARAMETER_BINS
) -> list[tuple[list[int], int]]:
    """The suite's architectures, deterministic in ``seed``.

    For each ``(low, high)`` bin, ``per_bin`` architectures of depth 2-6 with a parameter count
    in ``[low, high]`` (:func:`slt_jax.data.random_dln_widths`).

    Args:
      seed: seed of the architecture draws.
      per_bin: architectures per bin.
      parameter_bins: the ``(low, high)`` parameter-count bins.

    Returns:
      ``[(widths, instance_seed), ...]``; ``instance_seed`` numbers the instances from 0 and
      seeds the teacher, the data and the sampler of :func:`run_instance`.
    """
    from slt_jax.data import random_dln_widths

    instances = []
    key = jax.random.key(seed)
    for low, high in parameter_bins:
        for _ in range(per_bin):
            key, subkey = jax.random.split(key)
            max_width = max(4, int(2 * math.sqrt(high)))
            widths = random_dln_widths(
                subkey,
                num_layers_range=(2, 6),
                width_range=(2, max_width),
                parameter_count_range=(low, high),
            )
            instances.append((list(widths), len(instances)))
    return instances


def run_instance(
    widths: Sequence[int],
    instance_seed: int,
    sampler: str | None,
    num_samples: int = 10_000,
    minimal_rank: bool = True,
    **estimate_kwargs: Any,
) -> dict:
    """One DLN instance: a teacher, its data, and ``estimate_llc`` against Aoyagi's λ.

    Args:
      widths: the DLN's widths ``(H_0, ..., H_L)``.
      instance_seed: seeds the teacher (``1000 + s``), data (``2000 + s``) and run (``3000 + s``).
      sampler: a sampler name for ``estimate_llc(sampler=...)`` (``None``: its default).
      num_samples: training examples ``n``.
      minimal_rank: refactor the teacher so that every layer has the product's rank.
      **estimate_kwargs: further :func:`slt_jax.estimate_llc` arguments.

    Returns:
      a JSON-ready dict: widths, parameters, rank, true_lambda, estimate, mcse,
      std_over_chains, rhat, relative_error, wall_time_seconds (calibration and compilation
      included), diverged_chains, warnings and the chosen hyperparameters.
    """
    import slt_jax as slt
    from slt_jax.data import make_dln_data, make_dln_teacher
    from slt_jax.models import count_parameters, dln_loss

    widths = [int(width) for width in widths]
    teacher = make_dln_teacher(
        jax.random.key(1000 + instance_seed), widths, minimal_rank=minimal_rank
    )
    data = make_dln_data(jax.random.key(2000 + instance_seed), teacher.params, num_samples)
    truth = float(teacher.true_lambda)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = slt.estimate_llc(
            dln_loss, teacher.params, data, key=jax.random.key(3000 + instance_seed),
            sampler=sampler, **estimate_kwargs,
        )
    wall = time.perf_counter() - start
    hyperparameters = {k: v for k, v in result.hyperparameters.items() if k != "calibration"}
    return {
        "widths": widths,
        "parameters": count_parameters(teacher.params),
        "rank": teacher.rank,
        "true_lambda": truth,
        "estimate": float(result.mean),
        "mcse": float(result.mcse),
        "std_over_chains": float(result.std),
        "rhat": float(result.rhat),
        "relative_error": float(result.mean) / truth - 1.0,
        "wall_time_seconds": wall,
        "diverged_chains": [int(chain) for chain in result.diverged_chains],
        "warnings": [str(warning.message) for warning in caught],
        "hyperparameters": hyperparameters,
    }


def summarize(rows: Sequence[dict], max_parameters: int | None = None) -> dict:
    """Median and maximum absolute relative error and wall times of a list of instance rows.

    Args:
      rows: dicts from :func:`run_instance`.
      max_parameters: summarize only instances with at most this many parameters
        (``None``: all).

    Returns:
      ``{"instances", "median_abs_relative_error", "max_abs_relative_error",
      "max_wall_time_seconds", "total_wall_time_seconds"}`` (``None`` values without rows).

    Examples:
      >>> rows = [dict(parameters=10, relative_error=0.02, wall_time_seconds=1.0),
      ...         dict(parameters=20, relative_error=-0.1, wall_time_seconds=2.0),
      ...         dict(parameters=30, relative_error=0.04, wall_time_seconds=1.5)]
      >>> summary = summarize(rows)
      >>> round(summary["median_abs_relative_error"], 3), summary["max_abs_relative_error"]
      (0.04, 0.1)
    """
    kept = [r for r in rows if max_parameters is None or r["parameters"] <= max_parameters]
    errors = np.abs([r["relative_error"] for r in kept])
    times = [r["wall_time_seconds"] for r in kept]
    return {
        "instances": len(kept),
        "median_abs_relative_error": float(np.median(errors)) if kept else None,
        "max_abs_relative_error": float(np.max(errors)) if kept else None,
        "max_wall_time_seconds": float(max(times)) if kept else None,
        "total_wall_time_seconds": float(sum(times)) if kept else None,
    }


def _instances_of(size: BenchmarkSize, seed: int) -> list[tuple[list[int], int]]:
    if size.parameter_bins is None:
        return [(list(widths), seed + index) for index, widths in enumerate(size.fixed_widths)]
    return suite_instances(seed, size.per_bin, size.parameter_bins)


def run_benchmark(
    size: str | BenchmarkSize = "tiny",
    samplers: Sequence[str] = ALL_SAMPLERS,
    seed: int = 0,
    report=None,
) -> dict:
    """Run the DLN suite and the sampler comparison at one size.

    Every sampler in ``samplers`` runs :func:`run_instance` on every instance of ``size``;
    the first sampler's rows make the DLN-suite table (SGHMC, ``estimate_llc``'s default, when
    it is among them).

    Args:
      size: a key of :data:`SIZES` or a :class:`BenchmarkSize`.
      samplers: sampler names (see :data:`ALL_SAMPLERS`).
      seed: seed of the architectures and teachers.
      report: called with one line of text after each run (``None``: silent).

    Returns:
      a JSON-ready dict: ``size``, ``description``, ``seed``, ``machine``, ``results``
      (``{sampler: [row, ...]}``, rows from :func:`run_instance`), ``summary``
      (``{sampler: summarize(rows)}``) and ``wall_time_seconds``.
    """
    import os
    import platform

    if isinstance(size, str):
        size = SIZES[size]
    unknown = sorted(set(samplers) - set(ALL_SAMPLERS))
    if unknown or not samplers:
        raise ValueError(f"unknown samplers {unknown}; expected some of {list(ALL_SAMPLERS)}")
    ordered = [name for name in ALL_SAMPLERS if name in samplers]
    lengths = {
        name: value
        for name, value in (("num_chains", size.num_chains), ("num_draws", size.num_draws))
        if value is not None
    }
    start = time.perf_counter()
    results = {}
    for sampler in ordered:
        rows = []
        for widths, instance_seed in _instances_of(size, seed):
            row = run_instance(
                widths, instance_seed, sampler, num_samples=size.num_samples, **lengths
            )
            rows.append(row)
            if report is not None:
                report(
                    f"  {sampler:<12} {str(widths):<22} λ = {row['true_lambda']:<8g} "
                    f"estimate {row['estimate']:9.2f} ({100 * row['relative_error']:+.1f}%) "
                    f"{row['wall_time_seconds']:5.1f} s"
                )
        results[sampler] = rows
    return {
        "size": size.name,
        "description": size.description,
        "seed": seed,
        "num_samples": size.num_samples,
        "estimate_llc_arguments": lengths,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "python": platform.python_version(),
        },
        "results": results,
        "summary": {sampler: summarize(rows) for sampler, rows in results.items()},
        "wall_time_seconds": time.perf_counter() - start,
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_report(benchmark: dict) -> str:
    """The two plain-text tables of a :func:`run_benchmark` result.

    Args:
      benchmark: the dict :func:`run_benchmark` returns.

    Returns:
      the DLN-suite table (per instance: widths, parameters, rank, true λ, estimate ± MCSE,
      relative error, R-hat, wall time; then the median |relative error|) and the sampler
      comparison (per sampler: median and max |relative error|, slowest instance, total
      wall time), as one string.
    """
    results = benchmark["results"]
    suite_sampler = next(iter(results))
    rows = results[suite_sampler]
    lines = [
        f"slt-jax bench --size {benchmark['size']}: {benchmark['description']}",
        "",
        f"DLN suite: estimate_llc(sampler={suite_sampler!r}) vs Aoyagi's λ "
        "(minimal-rank teachers, x ~ U[-10, 10])",
    ]
    header = (
        f"{'widths':<24} {'params':>7} {'rank':>4} {'true λ':>8} {'estimate ± MCSE':>18} "
        f"{'rel. error':>10} {'R-hat':>6} {'time':>7}"
    )
    lines += [header, "-" * len(header)]
    for row in rows:
        estimate = f"{row['estimate']:.2f} ± {row['mcse']:.2f}"
        lines.append(
            f"{str(row['widths']):<24} {row['parameters']:>7} {row['rank']:>4} "
            f"{row['true_lambda']:>8g} {estimate:>18} {100 * row['relative_error']:>+9.1f}% "
            f"{row['rhat']:>6.3f} {row['wall_time_seconds']:>6.1f}s"
        )
    summary = benchmark["summary"][suite_sampler]
    lines.append(
        f"median |relative error| {_percent(summary['median_abs_relative_error'])}, "
        f"max {_percent(summary['max_abs_relative_error'])} over {summary['instances']} instances"
    )
    lines += [
        "",
        "Sampler comparison (arXiv 2507.21449 style): each sampler at its calibrated step size "
        "on the same instances",
    ]
    header = (
        f"{'sampler':<16} {'median |rel. err.|':>18} {'max |rel. err.|':>15} "
        f"{'slowest instance':>16} {'total time':>10}"
    )
    lines += [header, "-" * len(header)]
    for sampler, summary in benchmark["summary"].items():
        name = f"{sampler} (default)" if sampler == "sghmc" else sampler
        lines.append(
            f"{name:<16} {_percent(summary['median_abs_relative_error']):>18} "
            f"{_percent(summary['max_abs_relative_error']):>15} "
            f"{summary['max_wall_time_seconds']:>15.1f}s "
            f"{summary['total_wall_time_seconds']:>9.1f}s"
        )
    lines.append(
        "Times include calibration and compilation (a sampler's first instance compiles its "
        "program)."
    )
    return "\n".join(lines)
