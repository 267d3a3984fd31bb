"""Per-head refined LLCs over checkpoints: one sweep vs separate calls, measured in one run.

Trains the 2-layer attention-only transformer (4 heads per layer) on induction sequences,
keeps ``--checkpoints`` log-spaced checkpoints and estimates the weight-refined LLC of every
checkpoint × head with the arXiv 2410.02984 SGLD settings (step 1e-3, nβ 30, γ 200, 4 chains ×
200 draws after 100 burn-in steps, batch 32), four ways:

* ``sweep``: ``slt.llc_over_checkpoints`` (default grouping: one checkpoint's heads per run);
* ``sweep_vmapped``: the same with every cell stacked into one run (``cells_per_run`` = all);
* ``separate_estimate_llc``: one ``slt.estimate_llc(..., sampler=sgld(..., mask=head))`` per cell;
* ``separate_sample``: one ``slt.sample`` + ``slt.evaluate_loss`` + ``slt.llc`` per cell.

Each is run twice: ``cold`` (its first call, compilations included) and ``warm``. Compilations
are counted with ``slt.count_compilations()``. Writes ``benchmarks/results/llc_sweep.json``.

    python benchmarks/llc_sweep.py              # 10 checkpoints x 8 heads
    python benchmarks/llc_sweep.py --quick      # 3 x 4, a smoke test
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time
import warnings

import jax
import numpy as np
from flax import nnx

import slt_jax as slt
from _transformer import trained_transformer  # benchmarks/: the shared model

RESULTS = pathlib.Path(__file__).parent / "results" / "llc_sweep.json"


def problem(args):
    loss_fn, run, _, data, masks = trained_transformer(
        d_model=args.d_model, heads=args.heads, train_steps=args.train_steps,
        checkpoints=args.checkpoints)
    return loss_fn, run, data, masks


def sweep(loss_fn, checkpoints, data, masks, args, key, cells_per_run=None):
    result = slt.llc_over_checkpoints(
        loss_fn, checkpoints, data, key=key, masks=masks, sampler="refined_llc_paper",
        num_chains=4, num_draws=args.draws, num_burnin=args.burnin, batch_size=32,
        cells_per_run=cells_per_run,
    )
    return result.mean


def separate(loss_fn, checkpoints, data, masks, args, key, use_estimate_llc):
    base = slt.estimators.refined_llc_sampler()
    count = jax.tree.leaves(checkpoints)[0].shape[0]
    means = np.zeros((count, len(masks)))
    for c in range(count):
        params = jax.tree.map(lambda x: x[c], checkpoints)
        for k, mask in enumerate(masks.values()):
            sampler = slt.samplers.sgld(1e-3, nbeta=30.0, localization=200.0, mask=mask)
            cell_key = jax.random.fold_in(key, c * len(masks) + k)
            run = dict(num_chains=4, num_draws=args.draws, num_burnin=args.burnin, batch_size=32)
            if use_estimate_llc:
                result = slt.estimate_llc(loss_fn, params, data, key=cell_key, sampler=sampler, **run)
            else:
                trace = slt.sample(loss_fn, params, data, sampler, key=cell_key, **run)
                result = slt.llc(trace, nbeta=base.hyperparameters["nbeta"],
                                 init_loss=slt.evaluate_loss(loss_fn, params, data))
            means[c, k] = result.mean
    return means


def timed(function, *args, **kwargs):
    with slt.count_compilations() as counter:
        start = time.perf_counter()
        value = function(*args, **kwargs)
        seconds = time.perf_counter() - start
    return value, seconds, counter.count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--heads", type=int, default=4, help="heads per layer (2 layers)")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--burnin", type=int, default=100)
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="2: cold and warm; 1: cold only")
    parser.add_argument("--train-steps", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="3 checkpoints x 4 heads, 50 draws")
    parser.add_argument("--output", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.checkpoints, args.heads, args.draws, args.train_steps = 3, 2, 50, 200
        args.burnin, args.d_model = 20, 16
    loss_fn, run, data, masks = problem(args)
    checkpoints = nnx.to_pure_dict(run.checkpoints)
    methods = {
        "sweep": lambda key: sweep(loss_fn, checkpoints, data, masks, args, key),
        "sweep_vmapped": lambda key: sweep(loss_fn, checkpoints, data, masks, args, key,
                                           cells_per_run=len(masks) * len(run.steps)),
        "separate_estimate_llc": lambda key: separate(loss_fn, checkpoints, data, masks, args, key, True),
        "separate_sample": lambda key: separate(loss_fn, checkpoints, data, masks, args, key, False),
    }
    results = {}
    for name, method in methods.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            means, cold, cold_compiles = timed(method, jax.random.key(10))
            warm, warm_compiles = float("nan"), -1
            if args.repeats > 1:
                means, warm, warm_compiles = timed(method, jax.random.key(11))
        results[name] = dict(cold_seconds=cold, warm_seconds=warm, cold_compilations=cold_compiles,
                             warm_compilations=warm_compiles, mean_llc=float(np.mean(means)))
        print(f"{name:>22}: cold {cold:7.1f} s ({cold_compiles} compilations), "
              f"warm {warm:7.1f} s ({warm_compiles} compilations), mean LLC {np.mean(means):.2f}",
              flush=True)
    for name in ("sweep", "sweep_vmapped"):
        for other in ("separate_estimate_llc", "separate_sample"):
            for phase in ("cold", "warm"):
                ratio = results[other][f"{phase}_seconds"] / results[name][f"{phase}_seconds"]
                print(f"{other} / {name} ({phase}): {ratio:.2f}x")
    record = dict(
        cells=len(run.steps) * len(masks), checkpoints=len(run.steps), components=len(masks),
        draws=args.draws, chains=4, burnin=args.burnin, d_model=args.d_model, batch_size=32, train_steps=args.train_steps,
        machine=platform.platform(), processor=platform.processor(), devices=str(jax.devices()),
        results=results,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2))
    print("wrote", args.output)


if __name__ == "__main__":
    main()
