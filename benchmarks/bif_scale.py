r"""Time and memory of a streamed Bayesian influence function (issue 10).

The task: a ReLU MLP with widths 128-256-256-10 (101,386 parameters) at a teacher
(``slt.models.mlp_init``, He initialization), ``x ~ N(0, I)``, ``y = teacher(x)``, per-example loss
``½‖f(x) − y‖²``; ``n`` training and ``q`` query examples (drawn the same way). SGLD at the
teacher, step size 1e-6, ``nβ = n / log n``, ``γ = 1``, batch 256, 4 chains, no burn-in. At every
draw the losses of all ``n`` training and ``q`` query examples are streamed into
``slt.bif_accumulator("train", "query")`` inside the compiled program, with
``store=("loss",)``: the ``(chains, draws, n)`` losses are never held, only the
``O(chains (n + q) + n q)`` accumulator state. The result is the ``(n, q)`` BIF
``−β Cov(ℓ_i, φ_k)``, ``β = nβ / n``.

What is measured, per configuration ``(n, q, draws)``:

* ``compile_s``: the first ``slt.sample`` call on one block of draws (trace + compile + one
  block); the program does not depend on ``num_draws``, so the timed run reuses it;
* ``sampling_s``: a second call with another key and ``num_draws`` draws (the whole run,
  including finalizing the accumulator to the ``(n, q)`` BIF on the host side);
* ``xla_memory_bytes``: ``slt.compiled_memory(..., accumulators=..., query_data=...,
  store=("loss",))``, XLA's memory analysis of the compiled block program (arguments, output,
  temporaries, and the stored trace, here only the ``(chains, draws)`` minibatch loss). Its
  ``arguments``/``output``/``temporary`` parts must not grow with ``draws``;
* ``peak_rss_bytes``: the peak resident set size (``resource.getrusage``) of a fresh Python
  process that ran only this configuration (each configuration runs in its own subprocess,
  ``--one N Q DRAWS``), so it includes the interpreter, JAX and XLA's baseline (~0.5 GiB).

Configurations: the full task (``n = 10,000``, ``q = 1,000``, 200 draws) and one factor at a time
around it: ``n ∈ {2,500, 5,000}``, ``q = 250``, 50 draws. ``--quick`` runs a smoke size
(``n ∈ {500, 1,000}``, ``q ∈ {50, 100}``, 20 and 40 draws).

TODO: devinterp's ``compute_bif`` on the same task (its own venv,
``benchmarks/.devinterp/.venv``, run as in ``vs_devinterp.py``) is not compared yet: it is
written for PyTorch language models and would need a wrapper for an MLP with per-example losses.

How to run::

    .venv/bin/python benchmarks/bif_scale.py            # full size
    .venv/bin/python benchmarks/bif_scale.py --quick    # smoke test, about a minute
    .venv/bin/python benchmarks/bif_scale.py --base-only  # 10k x 1k x 200 draws only

Writes ``benchmarks/results/bif_scale.json`` (``bif_scale_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import jax
import numpy as np

import slt_jax as slt
from slt_jax.models import count_parameters, mlp_init, mlp_loss

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
WIDTHS = [128, 256, 256, 10]
NUM_CHAINS, BATCH_SIZE, STEP_SIZE, DRAWS_PER_BLOCK = 4, 256, 1e-6, 10
FULL = {"base": (10_000, 1_000, 200), "n": (2_500, 5_000), "q": (250,), "draws": (50,)}
QUICK = {"base": (1_000, 100, 40), "n": (500,), "q": (50,), "draws": (20,)}


def configurations(grid: dict) -> list[tuple[int, int, int]]:
    """The base size and one factor at a time around it, smallest work first."""
    n, q, draws = grid["base"]
    configs = {(n, q, draws)}
    configs |= {(other, q, draws) for other in grid["n"]}
    configs |= {(n, other, draws) for other in grid["q"]}
    configs |= {(n, q, other) for other in grid["draws"]}
    return sorted(configs, key=lambda c: (c[0] * c[2] * (1 + c[1] / c[0]), c))


def make_data(teacher, key, size: int):
    x = jax.random.normal(key, (size, WIDTHS[0]))
    return x, slt.models.mlp_apply(teacher, x)


def run_configuration(teacher, n: int, q: int, draws: int) -> dict:
    train = make_data(teacher, jax.random.key(n), n)
    query = make_data(teacher, jax.random.key(n + 1), q)
    nbeta = slt.default_nbeta(n)
    sampler = slt.samplers.sgld(STEP_SIZE, nbeta, 1.0)
    options = dict(
        num_chains=NUM_CHAINS, batch_size=BATCH_SIZE, draws_per_block=DRAWS_PER_BLOCK,
        query_data={"train": train, "query": query}, store=("loss",),
        accumulators={"bif": slt.bif_accumulator("train", "query", beta=nbeta / n)},
    )
    memory = slt.compiled_memory(mlp_loss, teacher, train, sampler, key=jax.random.key(0),
                                 num_draws=draws, **options)

    def timed(seed: int, num_draws: int) -> tuple[float, jax.Array]:
        start = time.perf_counter()
        trace = slt.sample(mlp_loss, teacher, train, sampler, key=jax.random.key(seed),
                           num_draws=num_draws, **options)
        bif = np.asarray(trace.accumulators["bif"])
        return time.perf_counter() - start, bif

    compile_s, _ = timed(1, DRAWS_PER_BLOCK)
    sampling_s, bif = timed(2, draws)
    assert bif.shape == (n, q) and np.isfinite(bif).all()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "n": n, "q": q, "draws": draws, "chains": NUM_CHAINS,
        "compile_s": compile_s, "sampling_s": sampling_s,
        "chain_draws_per_s": NUM_CHAINS * draws / sampling_s,
        "xla_memory_bytes": memory, "peak_rss_bytes": peak_rss,
        "bif_bytes": bif.nbytes, "bif_abs_max": float(np.abs(bif).max()),
    }


def in_subprocess(n: int, q: int, draws: int) -> dict:
    """One configuration in a fresh process (its own peak RSS); its JSON row."""
    command = [sys.executable, os.path.abspath(__file__), "--one", str(n), str(q), str(draws)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def growth(rows: list[dict], base: tuple[int, int, int]) -> dict:
    """Ratios of time and XLA memory against the base configuration, one factor at a time."""
    by_key = {(r["n"], r["q"], r["draws"]): r for r in rows}
    reference = by_key[base]
    ratios = {}
    for key, row in by_key.items():
        varied = [name for name, a, b in zip(("n", "q", "draws"), key, base) if a != b]
        if len(varied) == 1:
            label = f"{varied[0]}={key[('n', 'q', 'draws').index(varied[0])]}"
            ratios[label] = {
                "sampling_time_ratio": row["sampling_s"] / reference["sampling_s"],
                "xla_program_memory_ratio": _program_bytes(row) / _program_bytes(reference),
            }
    return ratios


def _program_bytes(row: dict) -> int:
    memory = row["xla_memory_bytes"]
    return memory["arguments"] + memory["output"] + memory["temporary"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes")
    parser.add_argument("--base-only", action="store_true",
                        help="only the base configuration (no growth with n, q, draws)")
    parser.add_argument("--one", type=int, nargs=3, metavar=("N", "Q", "DRAWS"),
                        help="run one configuration in this process and print its JSON row")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_configuration(mlp_init(jax.random.key(0), WIDTHS), *args.one)))
        return
    grid = QUICK if args.quick else FULL
    if args.base_only:
        grid = {"base": grid["base"], "n": (), "q": (), "draws": ()}
    teacher = mlp_init(jax.random.key(0), WIDTHS)
    rows = []
    for n, q, draws in configurations(grid):
        rows.append(in_subprocess(n, q, draws))
        row = rows[-1]
        print(f"n={n:>6} q={q:>5} draws={draws:>4}: compile {row['compile_s']:6.1f} s, "
              f"sampling {row['sampling_s']:6.1f} s, XLA program "
              f"{_program_bytes(row) / 2**20:7.1f} MiB, peak RSS "
              f"{row['peak_rss_bytes'] / 2**20:7.1f} MiB", flush=True)
        write(rows, teacher, grid, args.quick)  # after every configuration: partial results


def write(rows: list[dict], teacher, grid: dict, quick: bool) -> None:
    done = {(r["n"], r["q"], r["draws"]) for r in rows}
    result = {
        "task": f"MLP {'-'.join(map(str, WIDTHS))} ({count_parameters(teacher)} parameters), "
                f"SGLD, {NUM_CHAINS} chains, batch {BATCH_SIZE}, streamed bif_accumulator",
        "quick": quick, "machine": platform.platform(), "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0], "jax_version": jax.__version__,
        "complete": done == set(configurations(grid)),
        "configurations": rows,
        "growth_vs_base": growth(rows, grid["base"]) if grid["base"] in done else {},
    }
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "bif_scale_quick.json" if quick else "bif_scale.json")
    with open(path, "w") as file:
        json.dump(result, file, indent=2)


if __name__ == "__main__":
    main()
