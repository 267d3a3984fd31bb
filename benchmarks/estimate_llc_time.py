"""Where ``estimate_llc``'s wall time goes, how many programs it compiles, and the pairing pass.

Each model runs in a fresh Python process (no persistent compilation cache): the first
``estimate_llc`` call is "cold" (every program is traced and compiled), a second call with a
new key in the same process is "warm". The wall time of each call is split into phases by
wrapping the library's named steps in the child process (the library is not changed):

* ``calibration``: ``_calibrated_setup`` (L_n(w*) and the input checks, curvature, pilots,
  gradient noise);
* ``burn_in`` / ``draws``: the main run's ``sampling._burn_in`` / ``sampling._run_phase``
  (each waits for its blocks, so asynchronous dispatch does not move time between them);
* ``checks``: the end-of-run gradient-noise check, the drift statistics and diagnosis, ``llc``;
* ``reruns``: runs repeated inside the checks (the noise rerun at a larger batch);
* ``compile``: tracing, lowering and XLA compilation (``jax.monitoring`` durations), taken out
  of the phase it happened in;
* ``other``: the rest (input handling, hyperparameters, the main run's host work).

XLA compilations are counted with the same listener. ``--before DIR`` runs the same children
against another checkout (e.g. ``git worktree add /tmp/before HEAD``, or ``git archive HEAD |
tar -x -C /tmp/before``): the child's working directory is that checkout, so ``import slt_jax``
finds it first. The load average is recorded with every run (the 2-core machine is shared).

Models: the demo's DLN [12, 10, 14] (n = 10,000, 4 chains x 4000 draws, the defaults) and the
101k-parameter ReLU MLP 128-256-256-10 of ``vs_devinterp.py`` (n = 10,000, 4 chains x 500
draws); with ``--more`` also a 50k-parameter DLN [100, 100, 100, 100, 100, 100] (n = 20,000,
1000 draws) and the per-head refined LLC of the 2-layer attention-only transformer (one head,
``estimate_llc(mask=...)``, 1000 draws). ``--pairing`` measures the per-step cost of
``slt.sample`` with ``store=()`` (no pairing pass) against the default (the minibatch also
evaluated at w* for the paired estimator), side by side in one process.

``--keys K`` makes K warm calls (keys 11, 12, ...) after the cold one; each row has
``wall_over_main_run``, the call's wall time over its main run (the ``burn_in`` and ``draws``
phases of the sampling whose draws are the estimate: since issue 20 the burn-in, the noise
check after it and the draws continued at the chosen batch; a rerun is not part of it).

    python benchmarks/estimate_llc_time.py [--label after] [--before /tmp/before]
        [--models dln mlp] [--more] [--pairing] [--keys 5]

Writes ``benchmarks/results/estimate_llc_time_<label>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

RESULTS = pathlib.Path(__file__).parent / "results"
PHASES = ("calibration", "burn_in", "draws", "checks", "reruns", "compile", "other")

CHILD = r"""
import json, os, sys, time, warnings
import jax, jax.monitoring
import numpy as np

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
clock = {"stack": [["other", 0.0]], "totals": {}, "compiles": 0}

def add(phase, seconds):
    clock["totals"][phase] = clock["totals"].get(phase, 0.0) + seconds

def listener(event, duration, **kwargs):
    if event in COMPILE_EVENTS:
        add("compile", duration)
        clock["stack"][-1][1] -= duration  # taken out of the phase it happened in
    if event == COMPILE_EVENTS[-1]:
        clock["compiles"] += 1
jax.monitoring.register_event_duration_secs_listener(listener)

def timed(module, name, phase=None, pick=None, wait=False):
    function = getattr(module, name, None)
    if function is None:  # a step the other checkout does not have
        return
    def wrapper(*args, **kwargs):
        top = clock["stack"][-1][0]
        label = pick(top) if pick else phase
        if label is None:
            return function(*args, **kwargs)
        start = time.perf_counter()
        clock["stack"].append([label, 0.0])
        try:
            result = function(*args, **kwargs)
            if wait:
                jax.block_until_ready(result)
        finally:
            label, taken = clock["stack"].pop()
            elapsed = time.perf_counter() - start
            add(label, elapsed + taken)
            clock["stack"][-1][1] -= elapsed
        return result
    setattr(module, name, wrapper)

import slt_jax as slt
from slt_jax import sampling
from slt_jax.estimators import estimate
timed(estimate, "_calibrated_setup", "calibration")
timed(estimate, "_sample_with_retries", "main")
timed(estimate, "_control_noise_at_end", "checks")
# the noise check after the burn-in, inside the main run (issue 20)
timed(estimate, "_noise_bias_at_end", pick=lambda top: "checks" if top == "main" else None)
timed(estimate, "drift_statistics", "checks")
timed(estimate, "_drift_diagnosis", "checks")
timed(estimate, "llc", "checks")
timed(estimate, "sample", pick=lambda top: "reruns" if top == "checks" else None)
timed(sampling, "_burn_in", pick=lambda top: "burn_in" if top == "main" else None, wait=True)
timed(sampling, "_run_phase", pick=lambda top: "draws" if top == "main" else None, wait=True)

model = sys.argv[1]
if model in ("dln", "dln50k"):
    from slt_jax.data import make_dln_data, make_dln_teacher
    from slt_jax.models import dln_loss as loss_fn
    widths, n, draws = (([12, 10, 14], 10_000, 4000) if model == "dln"
                        else ([100] * 6, 20_000, 1000))
    teacher = make_dln_teacher(jax.random.key(0), widths, minimal_rank=True)
    params = teacher.params
    data = make_dln_data(jax.random.key(1), params, n)
    options = dict(num_draws=draws)
elif model == "mlp":
    from slt_jax.models import mlp_apply, mlp_init, mlp_loss as loss_fn
    params = mlp_init(jax.random.key(1), [128, 256, 256, 10])
    x = jax.random.normal(jax.random.key(2), (10_000, 128))
    data = (x, mlp_apply(params, x))
    options = dict(num_draws=500)
else:  # the refined-LLC notebook's setting: one head of a trained attention-only transformer
    import optax
    from flax import nnx
    tokens = slt.data.make_induction_data(jax.random.key(0), 4096, 16, 16)["tokens"]
    data = {"tokens": tokens}
    net = slt.models.AttentionOnlyTransformer(16, 16, d_model=32, num_heads=4, d_head=8,
                                              rngs=nnx.Rngs(0))
    run = slt.training.train(net, slt.models.next_token_loss, data, optax.adam(3e-3),
                             key=jax.random.key(1), num_steps=2000, batch_size=32)
    loss_fn, _ = slt.adapters.from_nnx(net, slt.models.next_token_loss)
    # train() leaves the module as it was (until 2026-12-06 this timed the UNTRAINED model,
    # whose head LLC read about -600): the trained parameters are the run's
    params = slt.adapters.as_params(loss_fn, run)
    mask = slt.masks.head(params, "blocks/0/attn/*", head=0, axis=0)
    options = dict(num_draws=1000, mask=mask)
jax.block_until_ready(data)
rows = []
calls = [("cold", 10)] + [("warm", 11 + k) for k in range(int(sys.argv[2]))]
for call, seed in calls:
    clock["totals"], clock["compiles"] = {}, 0
    start, cpu_start = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = slt.estimate_llc(loss_fn, params, data, key=jax.random.key(seed), **options)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    calibration = result.hyperparameters.get("calibration")
    phases = {k: v for k, v in clock["totals"].items() if k != "main"}
    phases["other"] = phases.get("other", 0.0) + clock["totals"].get("main", 0.0)
    phases["other"] += wall - sum(phases.values())
    main_run = phases.get("burn_in", 0.0) + phases.get("draws", 0.0)
    rows.append(dict(call=call, seed=seed, wall_seconds=wall, cpu_seconds=cpu,
                     main_run_seconds=main_run, wall_over_main_run=wall / main_run,
                     gradient_noise_bias_after_burnin=result.hyperparameters.get(
                         "gradient_noise_bias_after_burnin"),
                     gradient_noise_bias_at_end=result.hyperparameters.get(
                         "gradient_noise_bias_at_end"),
                     calibration_rounds=len(calibration.rounds) if calibration else 0,
                     compilations=clock["compiles"],
                     phases=phases, llc=result.mean, mcse=result.mcse,
                     batch_size=result.hyperparameters.get("batch_size"),
                     batch_size_raised_from=result.hyperparameters.get("batch_size_raised_from"),
                     load_average=os.getloadavg()))
print("RESULT " + json.dumps(rows))
"""

PAIRING = r"""
import json, os, sys, time
import jax, numpy as np
import slt_jax as slt
from slt_jax.data import make_dln_data, make_dln_teacher
from slt_jax.models import dln_loss, mlp_apply, mlp_init, mlp_loss

def problems():
    teacher = make_dln_teacher(jax.random.key(0), [12, 10, 14], minimal_rank=True)
    yield "dln", dln_loss, teacher.params, make_dln_data(jax.random.key(1), teacher.params, 10_000), 1e-7
    params = mlp_init(jax.random.key(1), [128, 256, 256, 10])
    x = jax.random.normal(jax.random.key(2), (10_000, 128))
    yield "mlp", mlp_loss, params, (x, mlp_apply(params, x)), 1e-7

results = {}
for name, loss_fn, params, data, step in problems():
    sampler = slt.samplers.sghmc(step, nbeta=1000.0, friction=0.1)
    run = dict(num_chains=4, num_draws=1024 if name == "dln" else 128, num_burnin=0,
               batch_size=500)
    def once(store):
        start = time.perf_counter()
        trace = slt.sample(loss_fn, params, data, sampler, key=jax.random.key(0), store=store, **run)
        jax.block_until_ready(trace.state)
        return (time.perf_counter() - start) / run["num_draws"]
    for store in (None, ()):
        once(store)  # compile
    times = {"paired": [], "store=()": []}
    for _ in range(5):  # alternating, so the load hits both alike
        times["paired"].append(once(None))
        times["store=()"].append(once(()))
    results[name] = dict(
        seconds_per_step={k: float(np.median(v)) for k, v in times.items()},
        ratio_unpaired_to_paired=float(np.median(times["store=()"]) / np.median(times["paired"])),
        load_average=os.getloadavg())
print("RESULT " + json.dumps(results))
"""


def _child(script: str, argument: str, tree: str | None, keys: int = 1) -> object:
    completed = subprocess.run(
        [sys.executable, "-c", script, argument, str(keys)], capture_output=True, text=True,
        cwd=tree or os.getcwd(),
    )
    if completed.returncode:
        raise RuntimeError(completed.stderr[-3000:])
    line = next(l for l in completed.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _table(model: str, tree: str, rows: list) -> None:
    print(f"\n{model} ({tree})  " + " ".join(f"{p:>11s}" for p in PHASES)
          + "      total    CPU  compiles rounds  batch   LLC            load  /main run")
    for row in rows:
        phases = " ".join(f"{row['phases'].get(p, 0.0):11.2f}" for p in PHASES)
        batch = (f"{row['batch_size_raised_from']}->{row['batch_size']}"
                 if row["batch_size_raised_from"] else f"{row['batch_size']}")
        print(f"  {row['call']:5s} {phases} {row['wall_seconds']:10.2f} {row['cpu_seconds']:6.1f}"
              f" {row['compilations']:9d} {row['calibration_rounds']:6d}"
              f"  {batch:>9s} {row['llc']:7.2f} ± {row['mcse']:.2f}  "
              f"{row['load_average'][0]:.1f}  {row.get('wall_over_main_run', float('nan')):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="after")
    parser.add_argument("--models", nargs="*", default=["dln", "mlp"])
    parser.add_argument("--more", action="store_true",
                        help="also the 50k-parameter DLN and the transformer head")
    parser.add_argument("--before", default=None,
                        help="a checkout of the code before the change, run side by side")
    parser.add_argument("--keys", type=int, default=1,
                        help="warm calls after the cold one, each with another key (the "
                        "ratio to the main run is per key)")
    parser.add_argument("--pairing", action="store_true",
                        help="also the per-step cost of store=() vs the paired default")
    args = parser.parse_args()
    import jax

    models = list(args.models) + (["dln50k", "transformer"] if args.more else [])
    trees = {"after": None, **({"before": args.before} if args.before else {})}
    results = {"jax": jax.__version__, "label": args.label, "time": time.ctime(),
               "load_average_at_start": os.getloadavg(), "models": {}}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"estimate_llc_time_{args.label}.json"
    for model in models:
        results["models"][model] = {}
        for tree_name, tree in trees.items():  # before and after back to back, per model
            rows = _child(CHILD, model, tree, args.keys)
            results["models"][model][tree_name] = rows
            _table(model, tree_name, rows)
            path.write_text(json.dumps(results, indent=2))  # so far
    if args.pairing:
        results["pairing"] = {name: _child(PAIRING, "", tree) for name, tree in trees.items()}
        for tree_name, rows in results["pairing"].items():
            for model, row in rows.items():
                per_step = row["seconds_per_step"]
                print(f"pairing {tree_name:6s} {model}: paired {1e6 * per_step['paired']:.0f} us/step,"
                      f" store=() {1e6 * per_step['store=()']:.0f} us/step, ratio "
                      f"{row['ratio_unpaired_to_paired']:.2f} (load {row['load_average'][0]:.1f})")
    path.write_text(json.dumps(results, indent=2))
    print("wrote", path)


if __name__ == "__main__":
    main()
