r"""Per-step cost of an SGLD step versus a plain ``optax.sgd`` step on the same MLP.

What is measured
----------------
One MLP (``widths = [128, 256, 256, 10]``, 101,386 parameters, ReLU, softmax cross-entropy),
synthetic classification data generated in process (``n = 10_000`` examples, labels from a
random linear teacher), minibatches of ``b = 256`` drawn *with replacement* inside the scan by
``jax.random.randint`` + ``jnp.take``, the step key derived as in :func:`slt_jax.sample`
(``fold_in(key, step)`` then ``split`` into a batch key and a noise key). Every variant is one
``jax.jit``-compiled ``lax.scan`` over steps (all but ``noise_only`` record the minibatch loss of
every step):

``sgd``
    the baseline: our own loop, ``value_and_grad`` of the mean minibatch loss,
    ``optax.sgd(1e-3)``, ``optax.apply_updates``.
``sgld_raw``
    the same loop with ``sampler.update(grads, state, params, key=noise_key)`` of
    ``slt_jax.samplers.sgld(step_size=1e-6, nbeta=default_nbeta(n), localization=1.0)``
    (single chain, hyperparameters closed over as constants): the *sampler's* overhead.
``sgld_driver`` (``num_chains`` = 1, 8, 32)
    ``slt_jax.sample(loss_fn, params, data, sampler, key=..., num_chains=C, num_draws=S,
    batch_size=256)`` (``steps_per_draw=1``, so one recorded loss per step); the difference to
    ``sgld_raw`` is the *driver's* overhead (``vmap`` over chains, hyperparameters passed as
    data, divergence bookkeeping, the nested draw/step scans).
``noise_only``
    a component measurement: a scan that only draws the Langevin noise
    (``slt_jax.samplers.standard_normal_like(key, params)``, one ``N(0, 1)`` per parameter) and
    adds it to the parameters, i.e. the part of an SGLD step that SGD does not have at all.

For every variant the first call (trace + compile + one run) is timed separately
(``first_call_s``; ``compile_s`` = first call minus the steady-state time of a call), then the
steady state is the median over ``--repeats`` further calls, each with a new key, each ended by
``jax.block_until_ready``. Repeats are interleaved round-robin across all variants so a change in
machine load (other processes) affects every variant alike. Reported: milliseconds per step,
``sgld / sgd`` per-step ratios (goal for one chain: <= 1.2), and for 8 and 32 chains the cost per
chain-step (time per step / num_chains) and relative to one chain. Multi-chain variants run
fewer steps (``--multi-chain-steps``) so the whole benchmark stays short; all numbers are per
step. Beside wall-clock time, the process CPU time of each call (``time.process_time``, all
threads) is reported (``cpu_*`` keys): it is much less sensitive to other processes competing
for the cores, but it does not show how well a step uses several cores (a single-threaded part
costs the same CPU time but more wall-clock time than a parallel one). The verdict uses the
wall-clock median.

How to run
----------
::

    python benchmarks/sampler_overhead.py            # default: about 1.5 minutes on 2 idle CPU
                                                     # cores, under 3 when other jobs compete
    python benchmarks/sampler_overhead.py --quick    # fewer steps and repeats, a smoke test
    python benchmarks/sampler_overhead.py --steps 1000 --repeats 7 --chains 1 8 32
    python benchmarks/sampler_overhead.py --batch-size 1024   # the noise cost is O(d), the
                                                              # gradient's O(batch * d)

It prints a side-by-side table and writes ``benchmarks/results/sampler_overhead.json`` (machine
information, settings and every number). Timings depend on the machine and on its load: compare
numbers from one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import slt_jax
import slt_jax.sampling
from slt_jax.models.mlp import mlp_classification_loss, mlp_init

WIDTHS = (128, 256, 256, 10)
NUM_EXAMPLES = 10_000
DEFAULT_BATCH_SIZE = 256
SGD_LEARNING_RATE = 1e-3
SGLD_STEP_SIZE = 1e-6
SGLD_LOCALIZATION = 1.0
RATIO_GOAL = 1.2
DEFAULT_OUTPUT = pathlib.Path(__file__).resolve().parent / "results" / "sampler_overhead.json"


# --------------------------------------------------------------------------------------------
# Problem
# --------------------------------------------------------------------------------------------


#: ``--problem``: "mlp" (the default above) or "dln", the quick start's 260-parameter deep
#: linear network [12, 10, 14] at its teacher (n = 10,000, squared error): a small model,
#: where the driver's own per-step work is the largest share of a step
PROBLEM = {"name": "mlp"}


def make_problem(seed: int = 0):
    """Synthetic classification data and MLP parameters at initialization (or the DLN)."""
    if PROBLEM["name"] == "dln":
        from slt_jax.data import make_dln_data, make_dln_teacher

        teacher = make_dln_teacher(jax.random.key(seed), [12, 10, 14], minimal_rank=True)
        return teacher.params, make_dln_data(jax.random.key(seed + 1), teacher.params,
                                             NUM_EXAMPLES)
    data_key, teacher_key, params_key = jax.random.split(jax.random.key(seed), 3)
    inputs = jax.random.normal(data_key, (NUM_EXAMPLES, WIDTHS[0]), jnp.float32)
    teacher = jax.random.normal(teacher_key, (WIDTHS[0], WIDTHS[-1]), jnp.float32)
    labels = jnp.argmax(inputs @ teacher, axis=-1).astype(jnp.int32)
    params = mlp_init(params_key, WIDTHS)
    return params, (inputs, labels)


def loss_fn(params, batch):
    """Per-example softmax cross-entropy (DLN: squared error), shape ``(b,)``."""
    if PROBLEM["name"] == "dln":
        from slt_jax.models import dln_loss

        return dln_loss(params, batch)
    return mlp_classification_loss(params, batch)


def mean_loss(params, batch):
    return jnp.mean(loss_fn(params, batch))


def draw_minibatch(data, key, batch_size):
    """``batch_size`` example indices uniformly with replacement, as the driver draws them."""
    indices = jax.random.randint(key, (batch_size,), 0, NUM_EXAMPLES)
    return jax.tree.map(lambda x: jnp.take(x, indices, axis=0), data)


def step_keys(key, step):
    """Batch key and noise key of one step, derived exactly as in :func:`slt_jax.sample`."""
    batch_key, noise_key = jax.random.split(jax.random.fold_in(key, step))
    return batch_key, noise_key


# --------------------------------------------------------------------------------------------
# Hand-written loops (baseline and raw sampler)
# --------------------------------------------------------------------------------------------


def make_optax_loop(transform, num_steps: int, batch_size: int, needs_key: bool):
    """A jitted ``lax.scan`` over ``num_steps`` steps of ``transform`` recording the batch loss."""
    value_and_grad = jax.value_and_grad(mean_loss)

    @jax.jit
    def run(params, data, key):
        def body(carry, step):
            params, state = carry
            batch_key, noise_key = step_keys(key, step)
            loss, grads = value_and_grad(params, draw_minibatch(data, batch_key, batch_size))
            if needs_key:
                updates, state = transform.update(grads, state, params, key=noise_key)
            else:
                updates, state = transform.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        carry = (params, transform.init(params))
        _, losses = jax.lax.scan(body, carry, jnp.arange(num_steps, dtype=jnp.int32))
        return losses

    return run


def make_noise_only_loop(num_steps: int):
    """Only the Langevin noise of each step: one ``N(0, 1)`` draw per parameter, added in."""

    @jax.jit
    def run(params, data, key):
        del data

        def body(params, step):
            _, noise_key = step_keys(key, step)
            noise = slt_jax.samplers.standard_normal_like(noise_key, params)
            return jax.tree.map(lambda w, z: w + SGLD_STEP_SIZE * z, params, noise), None

        # Return the final parameters so that XLA cannot drop the noise as dead code.
        params, _ = jax.lax.scan(body, params, jnp.arange(num_steps, dtype=jnp.int32))
        return params

    return run


def make_driver_run(sampler, num_chains: int, num_steps: int, batch_size: int):
    """``slt_jax.sample`` with one recorded minibatch loss per step."""

    def run(params, data, key):
        trace = slt_jax.sample(
            loss_fn,
            params,
            data,
            sampler,
            key=key,
            num_chains=num_chains,
            num_draws=num_steps,
            batch_size=batch_size,
        )
        return trace

    return run


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def _timed_call(function, params, data, key):
    """Wall-clock seconds and process CPU seconds (all threads) of one call, and its output."""
    start, cpu_start = time.perf_counter(), time.process_time()
    output = jax.block_until_ready(function(params, data, key))
    return time.perf_counter() - start, time.process_time() - cpu_start, output


def _losses_of(output):
    if isinstance(output, slt_jax.Trace):
        return output.loss
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(output)])


def run_benchmark(variants, params, data, repeats: int, log=print):
    """First call of every variant, then ``repeats`` interleaved rounds with new keys."""
    results = {}
    for index, variant in enumerate(variants):
        with slt_jax.count_compilations() as counter:
            seconds, _, output = _timed_call(
                variant["run"], params, data, jax.random.key(10_000 + index)
            )
        results[variant["name"]] = dict(
            first_call_s=seconds,
            steady_s=[],
            steady_cpu_s=[],
            compilations_on_first_call=counter.count,
            compilations_on_new_key=0,
        )
        log(f"  first call {variant['name']:<16s} {seconds:7.2f} s")
    for round_index in range(repeats):
        for index, variant in enumerate(variants):
            key = jax.random.key(1_000 * (round_index + 1) + index)
            with slt_jax.count_compilations() as counter:
                seconds, cpu_seconds, output = _timed_call(variant["run"], params, data, key)
            record = results[variant["name"]]
            record["steady_s"].append(seconds)
            record["steady_cpu_s"].append(cpu_seconds)
            record["compilations_on_new_key"] += counter.count
            losses = np.asarray(_losses_of(output))
            record["outputs_finite"] = bool(np.all(np.isfinite(losses)))
            if isinstance(output, slt_jax.Trace):
                record["any_chain_diverged"] = bool(np.any(np.asarray(output.diverged)))
            if variant["name"] != "noise_only":
                record["mean_recorded_loss"] = float(np.mean(losses))
        log(f"  round {round_index + 1}/{repeats} done")
    return results


def summarize(variants, raw_results):
    """Per-step numbers, ratios and per-chain costs from the raw timings."""
    rows = {}
    for variant in variants:
        name, steps, chains = variant["name"], variant["steps"], variant["chains"]
        record = raw_results[name]
        steady = statistics.median(record["steady_s"])
        per_step_ms = 1e3 * steady / steps
        cpu_per_step_ms = 1e3 * statistics.median(record["steady_cpu_s"]) / steps
        rows[name] = dict(
            kind=variant["kind"],
            num_chains=chains,
            num_steps=steps,
            first_call_s=record["first_call_s"],
            compile_s=max(record["first_call_s"] - steady, 0.0),
            steady_call_s_median=steady,
            steady_call_s_all=record["steady_s"],
            ms_per_step=per_step_ms,
            ms_per_step_min=1e3 * min(record["steady_s"]) / steps,
            ms_per_chain_step=per_step_ms / chains,
            steady_call_cpu_s_all=record["steady_cpu_s"],
            cpu_ms_per_step=cpu_per_step_ms,
            cpu_ms_per_chain_step=cpu_per_step_ms / chains,
            compilations_on_new_key=record["compilations_on_new_key"],
            outputs_finite=record.get("outputs_finite"),
            any_chain_diverged=record.get("any_chain_diverged"),
            mean_recorded_loss=record.get("mean_recorded_loss"),
        )
    sgd = rows["sgd"]["ms_per_step"]
    sgd_cpu = rows["sgd"]["cpu_ms_per_step"]
    one_chain = rows.get("sgld_driver_1")
    for row in rows.values():
        row["ms_per_step_over_sgd"] = row["ms_per_step"] / sgd
        row["ms_per_chain_step_over_sgd"] = row["ms_per_chain_step"] / sgd
        row["cpu_ms_per_step_over_sgd"] = row["cpu_ms_per_step"] / sgd_cpu
        row["cpu_ms_per_chain_step_over_sgd"] = row["cpu_ms_per_chain_step"] / sgd_cpu
        if row["kind"] == "sgld_driver" and one_chain is not None:
            row["ms_per_chain_step_over_1_chain"] = (
                row["ms_per_chain_step"] / one_chain["ms_per_chain_step"]
            )
            row["cpu_ms_per_chain_step_over_1_chain"] = (
                row["cpu_ms_per_chain_step"] / one_chain["cpu_ms_per_chain_step"]
            )

    headline = {
        "sgd_ms_per_step": sgd,
        "sgld_raw_ms_per_step": rows["sgld_raw"]["ms_per_step"],
        "noise_only_ms_per_step": rows["noise_only"]["ms_per_step"],
        "noise_only_over_sgd_step_ratio": rows["noise_only"]["ms_per_step"] / sgd,
        "sgld_raw_over_sgd_step_ratio": rows["sgld_raw"]["ms_per_step"] / sgd,
        "goal_sgld_over_sgd_step_ratio": RATIO_GOAL,
        "sgd_cpu_ms_per_step": sgd_cpu,
        "sgld_raw_over_sgd_cpu_time_ratio": rows["sgld_raw"]["cpu_ms_per_step"] / sgd_cpu,
        "noise_only_over_sgd_cpu_time_ratio": rows["noise_only"]["cpu_ms_per_step"] / sgd_cpu,
    }
    if one_chain is not None:
        headline.update(
            sgld_driver_ms_per_step_1_chain=one_chain["ms_per_step"],
            sgld_over_sgd_step_ratio_1_chain=one_chain["ms_per_step"] / sgd,
            sgld_over_sgd_step_ratio_1_chain_from_fastest_call=(
                one_chain["ms_per_step_min"] / rows["sgd"]["ms_per_step_min"]
            ),
            sgld_over_sgd_cpu_time_ratio_1_chain=one_chain["cpu_ms_per_step"] / sgd_cpu,
            sgld_driver_over_sgld_raw_step_ratio_1_chain=(
                one_chain["ms_per_step"] / rows["sgld_raw"]["ms_per_step"]
            ),
            sgld_driver_over_sgld_raw_cpu_time_ratio_1_chain=(
                one_chain["cpu_ms_per_step"] / rows["sgld_raw"]["cpu_ms_per_step"]
            ),
        )
        headline["meets_goal_1_chain"] = headline["sgld_over_sgd_step_ratio_1_chain"] <= RATIO_GOAL
    for name, row in rows.items():
        if row["kind"] == "sgld_driver" and row["num_chains"] > 1:
            chains = row["num_chains"]
            headline[f"sgld_ms_per_step_{chains}_chains"] = row["ms_per_step"]
            headline[f"sgld_ms_per_chain_step_{chains}_chains"] = row["ms_per_chain_step"]
            headline[f"sgld_per_chain_cost_relative_to_1_chain_{chains}_chains"] = row.get(
                "ms_per_chain_step_over_1_chain"
            )
            headline[f"sgld_per_chain_step_over_sgd_step_ratio_{chains}_chains"] = row[
                "ms_per_chain_step_over_sgd"
            ]
            headline[f"sgld_per_chain_cpu_time_relative_to_1_chain_{chains}_chains"] = row.get(
                "cpu_ms_per_chain_step_over_1_chain"
            )
    return rows, headline


def format_table(rows) -> str:
    """Side-by-side table: wall-clock time (median over calls) and process CPU time per step."""
    header = (
        f"{'variant':<15s} {'chains':>6s} {'steps':>5s} {'1st call':>8s} {'compile':>7s} "
        f"{'ms/step':>8s} {'ms/chain-step':>13s} {'vs sgd':>6s} {'per chain':>9s} "
        f"{'| cpu ms/chain-step':>19s} {'vs sgd':>6s} {'per chain':>9s}"
    )
    lines = [header, "-" * len(header)]

    def ratio(value):
        return f"{value:.2f}x" if value is not None else "-"

    for name, row in rows.items():
        lines.append(
            f"{name:<15s} {row['num_chains']:>6d} {row['num_steps']:>5d} "
            f"{row['first_call_s']:>7.2f}s {row['compile_s']:>6.2f}s "
            f"{row['ms_per_step']:>8.3f} {row['ms_per_chain_step']:>13.3f} "
            f"{ratio(row['ms_per_chain_step_over_sgd']):>6s} "
            f"{ratio(row.get('ms_per_chain_step_over_1_chain')):>9s} "
            f"| {row['cpu_ms_per_chain_step']:>17.3f} "
            f"{ratio(row['cpu_ms_per_chain_step_over_sgd']):>6s} "
            f"{ratio(row.get('cpu_ms_per_chain_step_over_1_chain')):>9s}"
        )
    return "\n".join(lines)


def machine_info() -> dict:
    import jaxlib

    devices = jax.devices()
    return dict(
        jax_version=jax.__version__,
        jaxlib_version=jaxlib.__version__,
        optax_version=optax.__version__,
        slt_jax_version=slt_jax.__version__,
        python_version=platform.python_version(),
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        backend=jax.default_backend(),
        device_count=jax.device_count(),
        device_kind=devices[0].device_kind if devices else None,
        cpu_count=os.cpu_count(),
        default_prng_impl=str(jax.config.jax_default_prng_impl),
        threefry_partitionable=bool(jax.config.jax_threefry_partitionable),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
    )


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (smoke test)")
    parser.add_argument("--steps", type=int, default=None, help="steps per single-chain call (500)")
    parser.add_argument(
        "--multi-chain-steps",
        type=int,
        default=None,
        help="steps per call for num_chains > 1 (30; per-step numbers are comparable)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per variant (5)")
    parser.add_argument("--chains", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="minibatch size (256)"
    )
    parser.add_argument("--output", type=pathlib.Path, default=None,
                        help="results JSON (default results/sampler_overhead[_dln].json)")
    parser.add_argument("--problem", choices=["mlp", "dln"], default="mlp",
                        help="the 101k MLP (default) or the quick start's 260-parameter DLN")
    arguments = parser.parse_args(argv)
    if arguments.steps is None:
        arguments.steps = 100 if arguments.quick else 500
    if arguments.multi_chain_steps is None:
        arguments.multi_chain_steps = min(arguments.steps, 20 if arguments.quick else 30)
    if arguments.repeats is None:
        arguments.repeats = 3 if arguments.quick else 5
    if min(arguments.steps, arguments.multi_chain_steps, arguments.repeats, min(arguments.chains)) < 1:
        parser.error("--steps, --multi-chain-steps, --repeats and --chains must be positive")
    if not 1 <= arguments.batch_size <= NUM_EXAMPLES:
        parser.error(f"--batch-size must be in [1, {NUM_EXAMPLES}]")
    if 1 not in arguments.chains:
        arguments.chains = [1] + list(arguments.chains)
    arguments.chains = sorted(set(arguments.chains))
    return arguments


def main(argv=None) -> dict:
    arguments = parse_arguments(argv)
    PROBLEM["name"] = arguments.problem
    if arguments.output is None:
        arguments.output = (DEFAULT_OUTPUT if arguments.problem == "mlp" else
                            DEFAULT_OUTPUT.with_name("sampler_overhead_dln.json"))
    params, data = make_problem()
    num_parameters = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
    nbeta = slt_jax.default_nbeta(NUM_EXAMPLES)
    sampler = slt_jax.samplers.sgld(
        step_size=SGLD_STEP_SIZE, nbeta=nbeta, localization=SGLD_LOCALIZATION
    )
    steps = arguments.steps
    batch_size = arguments.batch_size

    variants = [
        dict(name="sgd", kind="sgd", chains=1, steps=steps,
             run=make_optax_loop(optax.sgd(SGD_LEARNING_RATE), steps, batch_size, needs_key=False)),
        dict(name="sgld_raw", kind="sgld_raw", chains=1, steps=steps,
             run=make_optax_loop(sampler, steps, batch_size, needs_key=True)),
        dict(name="noise_only", kind="noise_only", chains=1, steps=steps,
             run=make_noise_only_loop(steps)),
    ]
    for chains in arguments.chains:
        chain_steps = steps if chains == 1 else arguments.multi_chain_steps
        variants.append(
            dict(name=f"sgld_driver_{chains}", kind="sgld_driver", chains=chains,
                 steps=chain_steps, run=make_driver_run(sampler, chains, chain_steps, batch_size))
        )

    info = machine_info()
    print(
        f"sampler overhead: {'DLN [12, 10, 14]' if arguments.problem == 'dln' else 'MLP ' + str(list(WIDTHS))} ({num_parameters:,} parameters), n={NUM_EXAMPLES:,}, "
        f"batch {batch_size}; {info['backend']} x{info['device_count']}, {info['cpu_count']} CPUs, "
        f"jax {info['jax_version']}"
    )
    print(
        f"steps: {steps} (1 chain), {arguments.multi_chain_steps} (more chains); "
        f"repeats: {arguments.repeats}; chains: {arguments.chains}"
    )
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    wall_start = time.perf_counter()
    raw_results = run_benchmark(variants, params, data, arguments.repeats)
    wall_seconds = time.perf_counter() - wall_start
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows, headline = summarize(variants, raw_results)

    print()
    print(format_table(rows))
    print()
    if "sgld_over_sgd_step_ratio_1_chain" in headline:
        verdict = "meets" if headline["meets_goal_1_chain"] else "MISSES"
        print(
            f"SGLD/SGD per step, 1 chain (slt_jax.sample): "
            f"{headline['sgld_over_sgd_step_ratio_1_chain']:.2f} wall-clock ({verdict} the goal "
            f"<= {RATIO_GOAL}), {headline['sgld_over_sgd_cpu_time_ratio_1_chain']:.2f} CPU time"
        )
        print(
            f"  sampler (raw loop / sgd): {headline['sgld_raw_over_sgd_step_ratio']:.2f} wall, "
            f"{headline['sgld_raw_over_sgd_cpu_time_ratio']:.2f} CPU; "
            f"driver (slt_jax.sample / raw loop): "
            f"{headline['sgld_driver_over_sgld_raw_step_ratio_1_chain']:.2f} wall, "
            f"{headline['sgld_driver_over_sgld_raw_cpu_time_ratio_1_chain']:.2f} CPU; "
            f"noise draw alone / sgd step: {headline['noise_only_over_sgd_step_ratio']:.2f} wall, "
            f"{headline['noise_only_over_sgd_cpu_time_ratio']:.2f} CPU"
        )
    for chains in arguments.chains:
        if chains > 1:
            print(
                f"{chains:>3d} chains: {headline[f'sgld_ms_per_chain_step_{chains}_chains']:.3f} ms per "
                f"chain-step = "
                f"{headline[f'sgld_per_chain_cost_relative_to_1_chain_{chains}_chains']:.2f}x one "
                f"chain ({headline[f'sgld_per_chain_cpu_time_relative_to_1_chain_{chains}_chains']:.2f}x "
                f"in CPU time), "
                f"{headline[f'sgld_per_chain_step_over_sgd_step_ratio_{chains}_chains']:.2f}x an SGD step"
            )
    print(f"total wall time {wall_seconds:.1f} s; load average before {load_before}, after {load_after}")

    result = dict(
        benchmark="sampler_overhead",
        description=(
            "Per-step time of slt_jax SGLD (raw optax-style loop and slt_jax.sample at several "
            "chain counts) versus a plain optax.sgd step, same MLP, data and minibatch drawing, "
            "each a jitted lax.scan over steps; steady state = median over repeated calls with new keys."
        ),
        machine=info,
        settings=dict(
            problem=arguments.problem,
            widths=list(WIDTHS) if arguments.problem == "mlp" else [12, 10, 14],
            num_parameters=num_parameters,
            num_examples=NUM_EXAMPLES,
            batch_size=batch_size,
            loss=("softmax cross-entropy (slt_jax.models.mlp_classification_loss)"
                  if arguments.problem == "mlp" else "squared error (slt_jax.models.dln_loss)"),
            sgd_learning_rate=SGD_LEARNING_RATE,
            sgld_step_size=SGLD_STEP_SIZE,
            sgld_nbeta=nbeta,
            sgld_localization=SGLD_LOCALIZATION,
            steps_single_chain=steps,
            steps_multi_chain=arguments.multi_chain_steps,
            repeats=arguments.repeats,
            chains=arguments.chains,
            quick=arguments.quick,
            argv=sys.argv[1:] if argv is None else list(argv),
        ),
        load_average_before=load_before,
        load_average_after=load_after,
        wall_time_s=wall_seconds,
        headline=headline,
        variants=rows,
    )
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {arguments.output}")
    return result


if __name__ == "__main__":
    main()
