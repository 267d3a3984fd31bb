"""The ``slt-jax`` command: ``slt-jax demo`` and ``slt-jax bench``.

``slt-jax demo`` estimates a deep linear network's local learning coefficient (LLC) with
:func:`slt_jax.estimate_llc` and prints it next to the known truth; ``slt-jax bench`` runs the
local-sampling benchmark of :mod:`slt_jax.benchmark` and prints its tables. The help texts
below are written for a terminal (``slt-jax --help``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

__all__ = ["main"]

_CACHE_TEXT = "$SLT_JAX_CACHE or ~/.cache/slt_jax/xla"

_DESCRIPTION = """\
slt_jax: singular learning theory in JAX.

Local learning coefficients (LLCs) from stochastic-gradient MCMC chains localized at a
parameter point, with calibrated defaults and error bars. This command runs a demo and
the local-sampling benchmark; the library itself is used from Python (import slt_jax)."""

_EPILOG = """\
commands:
  slt-jax demo     estimate a deep linear network's LLC and print it beside the truth
  slt-jax bench    the DLN suite and the sampler comparison, as tables

Run 'slt-jax demo --help' or 'slt-jax bench --help' for their options."""

_DEMO_DESCRIPTION = """\
Estimate the local learning coefficient (LLC) of a deep linear network (DLN) with
slt_jax.estimate_llc and compare it with the true value.

The teacher network has random low-rank layers (the DLN protocol of Furman & Lau,
arXiv 2402.03698), refactored so that every layer has the rank of the end-to-end product;
its learning coefficient is then Aoyagi's closed-form lambda. Inputs are x ~ U[-10, 10],
targets are the teacher's outputs. estimate_llc calibrates its step size (short pilot
chains), then samples; the demo prints the estimate with its Monte Carlo standard error,
R-hat, the truth, the relative error and the wall time."""

_DEMO_EPILOG = f"""\
compilation cache:
  Compiled XLA programs are cached on disk in {_CACHE_TEXT}
  (JAX's persistent compilation cache), so a second run skips most compilation.
  The demo prints the directory it uses; --no-cache turns the cache off.

examples:
  slt-jax demo
  slt-jax demo --widths 6 5 4 --sampler sgld --seed 1
  slt-jax demo --num-draws 1000 --quiet --no-cache"""

_BENCH_DESCRIPTION = """\
Run the local-sampling benchmark on deep linear networks (DLNs), whose learning
coefficients are known in closed form (Aoyagi), and print two tables:

  1. DLN suite: slt_jax.estimate_llc with its defaults (SGHMC, calibrated step size)
     on each instance; estimate, truth, relative error per instance and the median.
  2. Sampler comparison (in the spirit of arXiv 2507.21449): SGLD, RMSProp-SGLD,
     Adam-SGLD, SGHMC and SGNHT on the same instances, each at its calibrated step size;
     median and maximum relative error and wall time per sampler.

Wall times include calibration and compilation; a sampler's first instance compiles its
program, later instances with the same shapes reuse it."""


def _bench_epilog(sizes) -> str:
    lines = ["sizes:"]
    lines += [f"  {name:<8} {size.description}" for name, size in sizes.items()]
    lines += [
        "",
        "compilation cache:",
        f"  on by default, in {_CACHE_TEXT}; --no-cache turns it off.",
        "",
        "examples:",
        "  slt-jax bench --size tiny",
        "  slt-jax bench --size small --samplers sghmc sgld --json bench.json",
    ]
    return "\n".join(lines)


def _use_cache(args) -> None:
    import slt_jax as slt

    if args.no_cache:
        print("compilation cache: off (--no-cache)")
    else:
        directory = slt.enable_compilation_cache()
        print(f"compilation cache: {directory} (--no-cache to disable)")


def _demo(args) -> int:
    import jax

    import slt_jax as slt
    from slt_jax.data import make_dln_data, make_dln_teacher
    from slt_jax.models import count_parameters, dln_loss

    _use_cache(args)
    start = time.perf_counter()
    widths = list(args.widths)
    teacher = make_dln_teacher(jax.random.key(args.seed), widths, minimal_rank=True)
    data = make_dln_data(jax.random.key(args.seed + 1), teacher.params, args.num_samples)
    true_lambda = float(teacher.true_lambda)
    print(
        f"Deep linear network {widths} ({count_parameters(teacher.params)} parameters), teacher "
        f"rank {teacher.rank} (every layer rank {teacher.rank}), n = {args.num_samples}, "
        "x ~ U[-10, 10]"
    )
    sampler_text = args.sampler or "default sampler"
    print(f"Estimating its LLC with slt_jax.estimate_llc ({sampler_text}, calibrated step size)...")
    result = slt.estimate_llc(
        dln_loss,
        teacher.params,
        data,
        key=jax.random.key(args.seed + 2),
        sampler=args.sampler,
        num_chains=args.num_chains,
        num_draws=args.num_draws,
        progress=not args.quiet,
    )
    wall = time.perf_counter() - start
    calibration = result.hyperparameters["calibration"]
    if calibration is not None:
        print("calibration: " + calibration.summary())
    relative_error = result.mean / true_lambda - 1.0
    print(f"sampler         : {result.hyperparameters['sampler']}")
    raised_from = result.hyperparameters.get("batch_size_raised_from")
    if raised_from is not None:
        batch = result.hyperparameters["batch_size"]
        from slt_jax.estimators.estimate import NOISE_GROWTH, NOISE_RERUN

        after = result.hyperparameters.get("gradient_noise_bias_after_burnin")
        why = ("after the burn-in the gradient noise where the chains stood predicted "
               f"{after:.1%} bias ({NOISE_GROWTH:g}x that over the draws); the same chains "
               "went on"
               if after is not None and NOISE_GROWTH * after > NOISE_RERUN else
               f"the gradient noise predicted more than {NOISE_RERUN:.0%} bias")
        print(f"batch size      : {raised_from} → {batch or 'full'} ({why})")
    print(
        f"estimated LLC   : {result.mean:.3f} ± {result.mcse:.3f} (MCSE)   "
        f"R-hat {result.rhat:.3f}"
    )
    print(f"true λ (Aoyagi) : {true_lambda:.3f}")
    print(f"relative error  : {100 * relative_error:+.1f}%")
    print(f"wall time       : {wall:.1f} s (compilation included)")
    if result.diverged_chains:
        print(f"diverged chains (excluded): {list(result.diverged_chains)}")
    return 0


def _bench(args) -> int:
    from slt_jax.benchmark import format_report, run_benchmark

    _use_cache(args)
    samplers = ", ".join(args.samplers)
    print(f"running slt-jax bench --size {args.size} on {samplers} ...", flush=True)

    def report(line):
        print(line, flush=True)

    benchmark = run_benchmark(
        args.size, args.samplers, seed=args.seed, report=None if args.quiet else report
    )
    print()
    print(format_report(benchmark))
    print(f"total wall time {benchmark['wall_time_seconds']:.1f} s")
    if args.json is not None:
        with open(args.json, "w") as handle:
            json.dump(benchmark, handle, indent=1, default=float)
        print(f"wrote {args.json}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the reason, then where to read the usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _cache_options(command) -> None:
    command.add_argument(
        "--no-cache",
        action="store_true",
        help="do not read or write JAX's persistent compilation cache (default: the cache is "
        f"on, in {_CACHE_TEXT})",
    )


def _build_parser() -> argparse.ArgumentParser:
    from slt_jax import __version__

    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="slt-jax",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"slt_jax {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{demo,bench}")
    _add_demo(commands, formatter)
    _add_bench(commands, formatter)
    return parser


def _add_demo(commands, formatter) -> None:
    from slt_jax.benchmark import ALL_SAMPLERS

    demo = commands.add_parser(
        "demo",
        help="estimate a deep linear network's LLC and compare it with the true value",
        description=_DEMO_DESCRIPTION,
        epilog=_DEMO_EPILOG,
        formatter_class=formatter,
    )
    demo.add_argument(
        "--widths", type=_positive_int, nargs="+", default=[12, 10, 14], metavar="H",
        help="layer widths H_0 H_1 ... H_L of the network, at least two (default: 12 10 14)",
    )
    demo.add_argument(
        "--seed", type=_non_negative_int, default=0,
        help="seed of the teacher, the data and the sampler (default: 0)",
    )
    demo.add_argument(
        "--num-samples", type=_positive_int, default=10_000, metavar="N",
        help="number of training examples n (default: 10000)",
    )
    demo.add_argument(
        "--num-chains", type=_positive_int, default=4, metavar="C",
        help="number of sampling chains (default: 4)",
    )
    demo.add_argument(
        "--num-draws", type=_positive_int, default=4000, metavar="D",
        help="draws per chain, after num_draws/2 burn-in steps (default: 4000)",
    )
    demo.add_argument(
        "--sampler", default=None, choices=list(ALL_SAMPLERS),
        help="sampler to use (default: estimate_llc's default, sghmc)",
    )
    demo.add_argument(
        "--quiet", action="store_true",
        help="no progress bars (default: progress bars through calibration and sampling)",
    )
    _cache_options(demo)
    demo.set_defaults(command_parser=demo)


def _add_bench(commands, formatter) -> None:
    from slt_jax.benchmark import ALL_SAMPLERS, SIZES

    bench = commands.add_parser(
        "bench",
        help="run the local-sampling benchmark (DLN suite and sampler comparison)",
        description=_BENCH_DESCRIPTION,
        epilog=_bench_epilog(SIZES),
        formatter_class=formatter,
    )
    bench.add_argument(
        "--size", choices=list(SIZES), default="tiny",
        help="how many and how large the instances are; see the sizes below (default: tiny)",
    )
    bench.add_argument(
        "--samplers", nargs="+", choices=list(ALL_SAMPLERS), default=list(ALL_SAMPLERS),
        metavar="NAME",
        help="samplers to compare, some of: " + ", ".join(ALL_SAMPLERS)
        + " (default: all five; the DLN-suite table shows sghmc, or else the first of them in "
        "this order)",
    )
    bench.add_argument(
        "--seed", type=_non_negative_int, default=0,
        help="seed of the architectures, teachers, data and chains (default: 0)",
    )
    bench.add_argument(
        "--json", metavar="PATH", default=None,
        help="also write every number (per instance and sampler) to this JSON file "
        "(default: none)",
    )
    bench.add_argument(
        "--quiet", action="store_true",
        help="print only the tables, not a line per run (default: a line per run)",
    )
    _cache_options(bench)
    bench.set_defaults(command_parser=bench)


def main(argv=None) -> int:
    """Run the ``slt-jax`` command.

    Args:
      argv: the arguments after the program name (``None``: ``sys.argv[1:]``).

    Returns:
      the exit status: 0 on success; bad arguments exit with status 2 and a one-line reason
      on standard error.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        if len(args.widths) < 2:
            args.command_parser.error(
                f"--widths needs at least two widths (input and output), got {args.widths}"
            )
        if args.num_samples < 2:
            args.command_parser.error(f"--num-samples must be at least 2, got {args.num_samples}")
        return _demo(args)
    if args.command == "bench":
        if args.json is not None:
            directory = os.path.dirname(os.path.abspath(args.json))
            if not os.path.isdir(directory):
                args.command_parser.error(f"--json: the directory {directory} does not exist")
        return _bench(args)
    parser.error("choose a command: demo or bench")
    return 2


if __name__ == "__main__":
    sys.exit(main())
