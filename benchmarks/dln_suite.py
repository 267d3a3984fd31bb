"""DLN benchmark suite: ``estimate_llc`` with calibrated defaults vs Aoyagi's exact λ.

The protocol of docs/mathematics.md §7 (Furman & Lau, arXiv 2402.03698): a random deep linear network
teacher (depth 2-6, Xavier-normal layers, each with probability ½ cut to a random rank),
``x ~ U[-10, 10]``, noise-free targets, ``n = 10,000``, sampled at ``w* = teacher``. For each
sampler, ``slt_jax.estimate_llc(loss_fn, params, data, key=..., sampler=name)`` runs with no
other arguments; we record the relative error to the true learning coefficient and the wall
time (calibration and compilation included).

By default each teacher is refactored, with the same end-to-end map, so that every layer has
the product's rank (``make_dln_teacher(..., minimal_rank=True)``): Aoyagi's λ is the *global*
learning coefficient, attained at those most singular points, and the local coefficient at a
teacher whose layers have higher rank can be larger (``--protocol-teacher`` shows it).

    python benchmarks/dln_suite.py                      # all samplers, all instances
    python benchmarks/dln_suite.py --samplers sgld --max-parameters 10000

Writes ``benchmarks/results/dln_suite.json`` and ``benchmarks/results/dln_suite.png`` (estimate
vs truth) and prints a table per sampler with the median and max |relative error|.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import jax
import numpy as np

from slt_jax.benchmark import run_instance, suite_instances

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# the instances and the per-instance run live in the package (also behind `slt-jax bench`)
ALL_SAMPLERS = ["sgld", "rmsprop_sgld", "adam_sgld", "sgnht", "sghmc"]


def deep_instances(first_seed: int, seed: int = 77):
    """Two depth-5 and two depth-6 architectures with 200-2000 parameters (issue 9)."""
    from slt_jax.data import random_dln_widths

    key, instances = jax.random.key(seed), []
    for depth in (5, 5, 6, 6):
        key, subkey = jax.random.split(key)
        widths = random_dln_widths(subkey, num_layers_range=(depth, depth), width_range=(2, 20),
                                   parameter_count_range=(200, 2000))
        instances.append((list(widths), first_seed + len(instances)))
    return instances


#: depth-6 minimal-rank networks with product rank 1 and widths of order 10 (issue 17: one such
#: network read 12% low with no warning); teacher seed 1000 + 602 gives rank 1 for each
RANK1_DEPTH6 = ([12, 10, 9, 11, 10, 8, 10], [9, 10, 12, 8, 11, 10, 9], [10, 9, 11, 10, 8, 12, 10])


def rank1_instances(seed: int = 602):
    """Depth-6 rank-1 networks (:data:`RANK1_DEPTH6`), all with instance seed ``seed``."""
    return [(list(widths), seed) for widths in RANK1_DEPTH6]


def summarize(rows, max_parameters=10_000):
    small = [r for r in rows if r["parameters"] <= max_parameters]
    errors = np.abs([r["relative_error"] for r in small])
    return {
        "instances_up_to_max_parameters": len(small),
        "median_abs_relative_error": float(np.median(errors)) if len(errors) else None,
        "max_abs_relative_error": float(np.max(errors)) if len(errors) else None,
        "max_wall_time_seconds": float(max(r["wall_time_seconds"] for r in small)) if small else None,
        "all_instances_median_abs_relative_error": float(
            np.median(np.abs([r["relative_error"] for r in rows]))
        ),
    }


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 6))
    markers = dict(zip(ALL_SAMPLERS, "osD^v"))
    low = min(r["true_lambda"] for rows in results.values() for r in rows)
    high = max(r["true_lambda"] for rows in results.values() for r in rows)
    for sampler, rows in results.items():
        axis.errorbar(
            [r["true_lambda"] for r in rows],
            [r["estimate"] for r in rows],
            yerr=[2 * r["mcse"] if np.isfinite(r["mcse"]) else 0 for r in rows],
            fmt=markers.get(sampler, "o"), label=sampler, alpha=0.7, markersize=5,
        )
    line = np.geomspace(low * 0.8, high * 1.2, 10)
    axis.plot(line, line, "k--", lw=1, label="estimate = truth")
    axis.fill_between(line, 0.95 * line, 1.05 * line, color="k", alpha=0.08, label="±5%")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("true λ (Aoyagi)")
    axis.set_ylabel("estimate_llc (defaults)")
    axis.set_title("DLN suite: x ~ U[-10, 10], n = 10,000")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", nargs="+", default=ALL_SAMPLERS)
    parser.add_argument("--max-parameters", type=int, default=None,
                        help="skip instances with more parameters")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(RESULTS, "dln_suite.json"))
    parser.add_argument(
        "--protocol-teacher", action="store_true",
        help="use the protocol's teacher as drawn (layer ranks may exceed the product rank, "
        "where the local LLC can exceed Aoyagi's global λ) instead of its minimal-rank "
        "refactorization with the same product",
    )
    parser.add_argument("--deep", action="store_true",
                        help="add four minimal-rank networks of depth 5 and 6 (200-2000 "
                        "parameters, issue 9) to the suite")
    parser.add_argument("--rank1", action="store_true",
                        help="add three depth-6 minimal-rank networks of product rank 1 "
                        "(widths ~10, issue 17)")
    parser.add_argument("--only", type=int, nargs="*",
                        help="run only the instances with these instance seeds")
    parser.add_argument("--estimate-kwargs", default="{}",
                        help="JSON dict of extra estimate_llc arguments (for tuning)")
    args = parser.parse_args(argv)
    extra = json.loads(args.estimate_kwargs)

    instances = suite_instances(args.seed)
    if args.deep:
        instances += deep_instances(first_seed=500)
    if args.rank1:
        instances += rank1_instances()
    if args.only:
        instances = [(w, s) for w, s in instances if s in args.only]
    results = {}
    for sampler in args.samplers:
        rows = []
        print(f"\n== {sampler} ==")
        print(f"{'widths':>28} {'d':>7} {'r':>3} {'truth':>8} {'estimate':>9} {'rel.err':>8} {'time':>6}")
        for widths, instance_seed in instances:
            parameters = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
            if args.max_parameters and parameters > args.max_parameters:
                continue
            row = run_instance(
                widths, instance_seed, sampler, minimal_rank=not args.protocol_teacher, **extra
            )
            rows.append(row)
            print(
                f"{str(widths):>28} {row['parameters']:>7} {row['rank']:>3} "
                f"{row['true_lambda']:>8.1f} {row['estimate']:>9.2f} "
                f"{100 * row['relative_error']:>+7.1f}% {row['wall_time_seconds']:>5.1f}s"
                f"  R̂ {row['rhat']:.3f} warned: {bool(row['warnings'])}",
                flush=True,
            )
        results[sampler] = rows
        print(json.dumps(summarize(rows)))

    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    payload = {
        "protocol": "docs/mathematics.md §7 DLN protocol; estimate_llc defaults; n=10000, x~U[-10,10]",
        "teacher": "protocol" if args.protocol_teacher else "minimal-rank refactorization",
        "estimate_kwargs": extra,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "python": sys.version.split()[0],
        },
        "summary": {s: summarize(rows) for s, rows in results.items()},
        "results": results,
    }
    with open(args.output, "w") as handle:
        json.dump(payload, handle, indent=1, default=float)
    plot(results, os.path.splitext(args.output)[0] + ".png")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
