"""Per-head refined LLC of the refined-LLC notebook's transformer: seconds per head.

Issue 20's goal: "the attention-only transformer's per-head refined LLC (the refined-LLC
notebook's setting) in ≤ 30 s per head on this CPU". The notebook's setting
(``notebooks/refined_llc.ipynb``, real size): ``AttentionOnlyTransformer`` (vocabulary 16,
length 16, d_model 32, 2 layers × 4 heads of width 8; 9,728 parameters, 1,024 per head)
trained 3000 Adam steps on 4096 induction sequences, and arXiv 2410.02984's fixed per-head
setting, ``sampler="refined_llc_paper"`` (SGLD, step 1e-3, nβ = 30, γ = 200; 4 chains × 200
draws after 100, batch 32). This times, at the final checkpoint:

1. ``estimate_llc(loss_fn, params, data, sampler="refined_llc_paper", mask=head)`` for each of
   the 8 heads, one call each (the first cold: it compiles), with its compilations;
2. ``llc_over_checkpoints(..., masks=<8 heads>, sampler="refined_llc_paper")`` on the same
   checkpoint: all 8 heads as data of one program;
3. the floor: a bare ``slt.sample`` of the same sampler and lengths for one head (burn-in +
   draws, ``store=("loss",)``), warm.

    python benchmarks/head_llc_time.py [--calibrated]

``--calibrated`` adds one head with ``estimate_llc``'s calibrated defaults at 200 draws
(minutes on this CPU: the calibration's pilots and Lanczos iterations at batch 500).
``--sweep`` runs the notebook's sweep instead: ``llc_over_checkpoints`` over 8 heads × 10
checkpoints in the paper's setting (one program; a run per checkpoint, 8 cells × 4 chains
stacked), cold and warm, against the cost of its sampling steps: the same 10 runs of 32
chains × 300 steps as bare ``slt.sample`` calls (``head_llc_time_sweep.json``).
Writes ``benchmarks/results/head_llc_time.json`` with load averages and CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time
import warnings

import jax
import numpy as np

import slt_jax as slt
from _transformer import trained_transformer  # benchmarks/: the shared model

RESULTS = pathlib.Path(__file__).parent / "results"


def _timed(function):
    """``(result, row)``: wall and CPU seconds, compilations and the load average."""
    start, cpu = time.perf_counter(), time.process_time()
    with slt.count_compilations() as counter, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function()
        jax.block_until_ready(jax.tree.leaves(getattr(result, "mean", result)))
    row = dict(wall_seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu,
               compilations=counter.count, load_average=os.getloadavg(),
               warnings=sorted({str(w.message)[:90] for w in caught}))
    return result, row


def _sweep(results) -> None:
    """8 heads × 10 checkpoints, paper setting, against bare ``sample`` runs of its steps."""
    loss_fn, run, params, data, heads = trained_transformer()
    calls = []
    for call, seed in (("cold", 2), ("warm", 3)):
        sweep, row = _timed(lambda: slt.llc_over_checkpoints(
            loss_fn, run, data, key=jax.random.key(seed), masks=heads,
            sampler="refined_llc_paper"))
        calls.append(dict(call=call, final_checkpoint_llc=np.asarray(sweep.mean)[-1].tolist(),
                          **row))
        print(f"sweep 8 x 10, {call}: {row['wall_seconds']:.1f} s, {row['compilations']} "
              "compilations", flush=True)
    sampler = slt.samplers.sgld(1e-3, 30.0, 200.0,
                                mask=slt.masks.trainable(params, heads["L0H0"]))
    bare = []
    for seed in range(11):  # the first compiles; then one per checkpoint
        _, row = _timed(lambda: slt.sample(
            loss_fn, slt.adapters.as_params(loss_fn, run.checkpoint(seed % 10)), data, sampler,
            key=jax.random.key(seed), num_chains=32, num_draws=200, num_burnin=100,
            batch_size=32, store=("loss",)).loss)
        bare.append(row)
    steps = sum(row["wall_seconds"] for row in bare[1:])
    results["sweep_8_heads_10_checkpoints"] = dict(
        calls=calls, bare_sample_runs=bare, bare_sampling_seconds=steps,
        cold_over_steps=calls[0]["wall_seconds"] / steps,
        warm_over_steps=calls[1]["wall_seconds"] / steps)
    print(f"its sampling steps: {steps:.1f} s; sweep / steps: cold "
          f"{calls[0]['wall_seconds'] / steps:.2f}, warm {calls[1]['wall_seconds'] / steps:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibrated", action="store_true")
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    results = {"jax": jax.__version__, "time": time.ctime(), "load_average_at_start": os.getloadavg()}
    if args.sweep:
        _sweep(results)
        path = RESULTS / "head_llc_time_sweep.json"
        path.write_text(json.dumps(results, indent=2, default=float))
        print(f"wrote {path}")
        return
    loss_fn, _, params, data, heads = trained_transformer()
    jax.block_until_ready(params)
    rows = []
    for k, (label, mask) in enumerate(heads.items()):
        result, row = _timed(lambda: slt.estimate_llc(
            loss_fn, params, data, key=jax.random.key(10 + k), sampler="refined_llc_paper",
            mask=mask))
        rows.append(dict(head=label, call="cold" if k == 0 else "warm", llc=result.mean,
                         mcse=result.mcse, rhat=result.rhat, **row))
        print(f"{label}: {row['wall_seconds']:6.2f} s wall, {row['cpu_seconds']:6.2f} CPU-s, "
              f"{row['compilations']} compilations, LLC {result.mean:.3f} ± {result.mcse:.3f}")
    results["estimate_llc_per_head"] = rows
    checkpoint = jax.tree.map(lambda leaf: np.asarray(leaf)[None], params)
    sweep, row = _timed(lambda: slt.llc_over_checkpoints(
        loss_fn, checkpoint, data, key=jax.random.key(2), masks=heads,
        sampler="refined_llc_paper"))
    results["sweep_8_heads"] = dict(per_head_seconds=row["wall_seconds"] / len(heads),
                                    llc=np.asarray(sweep.mean)[0].tolist(), **row)
    print(f"sweep of 8 heads: {row['wall_seconds']:.2f} s ({row['compilations']} compilations)")
    sampler = slt.samplers.sgld(1e-3, 30.0, 200.0, mask=slt.masks.trainable(params, heads["L0H0"]))
    floors = []
    for seed in (0, 1):  # the first compiles the bare program
        _, row = _timed(lambda: slt.sample(loss_fn, params, data, sampler, key=jax.random.key(seed),
                                           num_chains=4, num_draws=200, num_burnin=100,
                                           batch_size=32, store=("loss",)).loss)
        floors.append(row)
    results["bare_sample_one_head"] = floors
    warm = [r["wall_seconds"] for r in rows[1:]]
    results["summary"] = dict(
        warm_per_head_median_seconds=float(np.median(warm)),
        cold_first_head_seconds=rows[0]["wall_seconds"],
        bare_sample_seconds=floors[-1]["wall_seconds"],
        warm_call_over_bare_sample=float(np.median(warm)) / floors[-1]["wall_seconds"],
    )
    print(json.dumps(results["summary"], indent=1))
    if args.calibrated:
        result, row = _timed(lambda: slt.estimate_llc(loss_fn, params, data, key=jax.random.key(3),
                                                      mask=heads["L0H0"], num_draws=200))
        results["calibrated_one_head_200_draws"] = dict(llc=result.mean, mcse=result.mcse, **row)
        print(f"calibrated defaults, 200 draws, L0H0: {row['wall_seconds']:.1f} s")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "head_llc_time.json"
    path.write_text(json.dumps(results, indent=2, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
