"""Per-head, per-token susceptibilities: one compiled program vs one run per head, in one run.

The 2-layer attention-only transformer (``--heads`` heads per layer) briefly trained on
induction sequences; components = every head (``slt.masks.head``), one probe set of
``--probe-sequences`` sequences with per-token losses (``(q, T)`` χ per head), a fixed base
set of ``--base`` sequences, 4 chains × ``--draws`` draws after ``--burnin`` steps, batch
``--batch``, a fixed SGHMC step (the calibration costs the same per head either way and is
left out). Three ways to get every head × token:

* ``one_program``: ``slt.estimate_susceptibilities(components=heads)``: the heads are cells
  stacked along the chain axis of one block program, χ streamed by per-cell accumulators;
* ``loop_estimate``: a Python loop of ``slt.estimate_susceptibilities(components={head: mask})``
  (one head per run; the program is compiled for the first head and reused);
* ``loop_sample``: devinterp's loop: per head, ``slt.sample`` storing the base and probe losses
  of every draw, then ``slt.susceptibility`` on the stored draws (memory grows with draws).

Each runs twice, ``cold`` (compilations included) and ``warm``; compilations are counted with
``slt.count_compilations()``. ``loop_sample`` runs head ``k``'s chains with the keys the one
program gives cell ``k`` (``split(fold_in(key, k), 4)``) and the same sampler, so the max
|difference| of its χ from ``one_program``'s is float rounding (recorded); ``loop_estimate``'s
chains differ (its one cell folds its key again). ``cold`` is in the order listed, so
``one_program``'s includes compilations the loops then reuse (loss evaluation, checks); the
``warm`` ratios are the steady state. Writes
``benchmarks/results/susceptibility_scale.json``.

    python benchmarks/susceptibility_scale.py            # 8 heads, 200 draws
    python benchmarks/susceptibility_scale.py --quick    # 4 heads, 30 draws (smoke test)
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
import optax
from flax import nnx

import slt_jax as slt

RESULTS = pathlib.Path(__file__).parent / "results" / "susceptibility_scale.json"
LENGTH, VOCAB = 16, 16


def problem(args):
    data = {"tokens": slt.data.make_induction_data(jax.random.key(0), 4096, LENGTH, VOCAB,
                                                   repeat_length=6)["tokens"]}
    model = slt.models.AttentionOnlyTransformer(VOCAB, LENGTH, d_model=args.d_model,
                                                num_heads=args.heads,
                                                d_head=args.d_model // args.heads,
                                                rngs=nnx.Rngs(0))
    run = slt.training.train(model, slt.models.next_token_loss, data, optax.adam(3e-3),
                             key=jax.random.key(1), num_steps=args.train_steps, batch_size=32,
                             num_checkpoints=2)
    loss_fn, params = slt.adapters.from_nnx(model, slt.models.next_token_loss)
    params = slt.adapters.as_params(loss_fn, run)
    heads = {f"L{layer}H{head}": slt.masks.head(params, f"blocks/{layer}/attn/*", head=head,
                                                 axis=0)
             for layer in range(2) for head in range(args.heads)}
    probe = {"tokens": slt.data.make_induction_data(jax.random.key(2), args.probe_sequences,
                                                    LENGTH, VOCAB, repeat_length=6)["tokens"]}
    base = {"tokens": data["tokens"][: args.base]}
    return loss_fn, params, data, heads, probe, base


def settings(args):
    return dict(num_chains=4, num_draws=args.draws, num_burnin=args.burnin,
                batch_size=args.batch, step_size=args.step_size)


def one_program(loss_fn, params, data, heads, probe, base, args, key):
    result = slt.estimate_susceptibilities(loss_fn, params, data, probes={"probe": probe},
                                           components=heads, key=key, base_data=base,
                                           **settings(args))
    return {label: result.chi[label]["probe"] for label in heads}


def loop_estimate(loss_fn, params, data, heads, probe, base, args, key):
    chi = {}
    for k, (label, mask) in enumerate(heads.items()):
        result = slt.estimate_susceptibilities(
            loss_fn, params, data, probes={"probe": probe}, components={label: mask},
            key=jax.random.fold_in(key, k), base_data=base, **settings(args))
        chi[label] = result.chi[label]["probe"]
    return chi


def loop_sample(loss_fn, params, data, heads, probe, base, args, key):
    chi, nbeta = {}, slt.default_nbeta(len(data["tokens"]))
    for k, (label, mask) in enumerate(heads.items()):
        sampler = slt.samplers.sghmc(args.step_size, nbeta, 1.0, mask=mask)
        trace = slt.sample(loss_fn, params, data, sampler, key=jax.random.fold_in(key, k),
                           num_chains=4, num_draws=args.draws, num_burnin=args.burnin,
                           batch_size=args.batch, query_data={"base": base, "probe": probe})
        base_loss = trace.query_losses["base"].mean((-2, -1))
        chi[label] = np.asarray(slt.susceptibility(base_loss, trace.query_losses["probe"],
                                                   base_loss))
    return chi


def timed(function, *args):
    with slt.count_compilations() as counter, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        value = function(*args)
        jax.block_until_ready(jax.tree.leaves(value))
        seconds = time.perf_counter() - start
    return value, seconds, counter.count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=4, help="heads per layer (2 layers)")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--burnin", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--base", type=int, default=128, help="base-set sequences")
    parser.add_argument("--probe-sequences", type=int, default=64)
    parser.add_argument("--step-size", type=float, default=1e-4)
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="4 heads, 30 draws")
    parser.add_argument("--output", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.heads, args.draws, args.burnin, args.train_steps = 2, 30, 10, 50
        args.probe_sequences, args.base, args.d_model = 8, 16, 16
    loss_fn, params, data, heads, probe, base = problem(args)
    methods = {"one_program": one_program, "loop_estimate": loop_estimate,
               "loop_sample": loop_sample}
    results, values = {}, {}
    for name, method in methods.items():
        arguments = (loss_fn, params, data, heads, probe, base, args)
        _, cold, cold_compiles = timed(method, *arguments, jax.random.key(10))
        values[name], warm, warm_compiles = timed(method, *arguments, jax.random.key(11))
        results[name] = dict(cold_seconds=cold, warm_seconds=warm,
                             cold_compilations=cold_compiles, warm_compilations=warm_compiles)
        print(f"{name:>14}: cold {cold:7.1f} s ({cold_compiles} compilations), "
              f"warm {warm:7.1f} s ({warm_compiles} compilations)", flush=True)
    difference = max(float(np.max(np.abs(values["loop_sample"][h] - values["one_program"][h])))
                     for h in heads)
    scale = max(float(np.max(np.abs(values["one_program"][h]))) for h in heads)
    ratios = {f"{other}/one_program ({phase})":
              results[other][f"{phase}_seconds"] / results["one_program"][f"{phase}_seconds"]
              for other in ("loop_estimate", "loop_sample") for phase in ("cold", "warm")}
    for label, ratio in ratios.items():
        print(f"{label}: {ratio:.2f}x")
    print(f"max |chi(loop_sample) - chi(one_program)| = {difference:.3g} (max |chi| {scale:.3g})")
    record = dict(
        components=len(heads), probe_tokens=int(args.probe_sequences * (LENGTH - 1)),
        draws=args.draws, chains=4, burnin=args.burnin, batch_size=args.batch,
        base_sequences=args.base, d_model=args.d_model, step_size=args.step_size,
        train_steps=args.train_steps, results=results, ratios=ratios,
        max_abs_chi_difference_loop_sample_vs_one_program=difference, max_abs_chi=scale,
        machine=platform.platform(), processor=platform.processor(), devices=str(jax.devices()),
        load_average_at_end=list(__import__("os").getloadavg()),
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2))
    print("wrote", args.output)


if __name__ == "__main__":
    main()
