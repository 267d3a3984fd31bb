"""The ``slt-jax`` command: ``slt-jax demo`` estimates a DLN's LLC against its known truth."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args) -> int:
    import jax

    import slt_jax as slt
    from slt_jax.data import make_dln_data, make_dln_teacher
    from slt_jax.models import count_parameters, dln_loss

    start = time.perf_counter()
    if not args.no_cache:
        slt.enable_compilation_cache()
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
    print(f"estimated LLC   : {result.mean:.3f} ± {result.mcse:.3f} (MCSE)   R-hat {result.rhat:.3f}")
    print(f"true λ (Aoyagi) : {true_lambda:.3f}")
    print(f"relative error  : {100 * relative_error:+.1f}%")
    print(f"wall time       : {wall:.1f} s (compilation included)")
    if result.diverged_chains:
        print(f"diverged chains (excluded): {list(result.diverged_chains)}")
    return 0


def main(argv=None) -> int:
    from slt_jax import __version__

    parser = argparse.ArgumentParser(prog="slt-jax", description=__doc__)
    parser.add_argument("--version", action="version", version=f"slt_jax {__version__}")
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser("demo", help="estimate a deep linear network's LLC vs its truth")
    demo.add_argument("--widths", type=int, nargs="+", default=[12, 10, 14])
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--num-samples", type=int, default=10_000)
    demo.add_argument("--num-chains", type=int, default=4)
    demo.add_argument("--num-draws", type=int, default=4000)
    demo.add_argument(
        "--sampler",
        default=None,
        choices=["sgld", "rmsprop_sgld", "adam_sgld", "sgnht", "sghmc"],
        help="default: estimate_llc's default sampler",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.add_argument(
        "--no-cache", action="store_true", help="do not use the persistent compilation cache"
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
