"""``llc_over_checkpoints`` over heads x checkpoints: its wall time against its sampling steps.

Issue 20's goal: ``llc_over_checkpoints`` over 8 heads x 10 checkpoints in one program at
<= 1.5x the cost of its sampling steps. This trains the 2-layer attention-only transformer of
``llc_sweep.py`` / the refined-LLC notebook (vocabulary 16, length 16, d_model 32, 4 heads of
width 8 per layer, ``make_induction_data``), keeps log-spaced checkpoints and makes one
``slt.llc_over_checkpoints(masks=heads)`` call with the default policy (``estimate_llc``'s:
per-cell calibrated SGHMC, nbeta = n/log n, gamma = 1) twice in one fresh process: ``cold``
(every program compiled) and ``warm`` (another key). Each call's wall time is split into
exclusive phases by wrapping the library's named steps (the library is not changed):

* ``init_loss``: L_n(w*_c) per checkpoint;
* ``calibration``: ``_cell_samplers``, split into ``cal_center_check`` (the input checks at w*),
  ``cal_lanczos_center`` (lambda_max at w*), ``cal_pilots`` (the pilot runs),
  ``cal_lanczos_pilot_ends`` (lambda_max where the pilots end), ``cal_gradient_noise`` and
  ``cal_other``;
* ``prepare``: the main program's ``_prepare`` (its input checks at the first checkpoint);
* ``sampling``: the main runs (``_run`` of the block program; one run per checkpoint);
* ``retry_sampling``: runs of cells repeated at half the step size (diverged or ran away);
* ``checks``: each cell's ``llc`` reduction and the gathered warnings;
* ``compile``: tracing, lowering and XLA compilation (``jax.monitoring``), taken out of the
  phase it happened in (``compile_by_phase`` says where);
* ``other``: the rest.

"The cost of its sampling steps" is measured as a bare ``slt.sample`` of the same chain-steps:
per checkpoint one call with ``heads x chains`` chains, ``num_burnin + num_draws`` steps and
the sweep's batch (SGHMC at the median calibrated step and friction, head 0's mask: the same
program shape as the sweep's main runs), run twice (the first compiles; the second is the
reference). ``ratio = sweep wall / bare sampling wall``, cold and warm. The sweep's own main
runs (``sampling``) are reported too: they are the same steps inside the call.

It also counts XLA compilations (``slt.count_compilations()``), the calibration's programs run
(sample calls, block dispatches, Lanczos calls) and expresses the per-cell calibration in
"main-run step equivalents" to extrapolate the ratio to other run lengths
(``ratio(D) ~ (calibration + sampling(D) + rest) / sampling(D)``).

    taskset -c 1 python benchmarks/sweep_heads_time.py                   # 4 heads x 5 ckpts
    taskset -c 1 python benchmarks/sweep_heads_time.py --heads 8 --checkpoints 10
    taskset -c 1 python benchmarks/sweep_heads_time.py --heads 1 --checkpoints 10 --keep-last 1 \
        --batch-size 500 --examples 4096 --draws 1000 --burnin 500 --calls 1 --bare-passes 1 \
        --output benchmarks/results/sweep_heads_time_cell_batch500.json   # one cell, real size
    python benchmarks/sweep_heads_time.py --quick                          # smoke test

Writes ``benchmarks/results/sweep_heads_time.json`` (with load averages and CPU seconds: the
machine is shared, compare CPU seconds).

Measured (2026-12-06, one core of the 2-core CPU, ``taskset -c 1``, load 1.5-4.4):

* 4 heads x 3 checkpoints, 4 chains x (100 + 200) steps, batch 32, n = 1024: cold 627 s
  (19.4x the bare sampling steps, 32.3 s; 13 compilations), warm 487 s (15.1x; 0
  compilations). Calibration is 94% of the warm call (38 s per cell: Lanczos at w* 24%,
  pilots 27%, Lanczos at the pilots' ends 46%, gradient noise 3%), i.e. ~4200 main-run
  steps per cell against 300; the main runs cost what bare ``sample`` costs (30.7 vs 32.3 s);
  init loss, prepare, checks and the rest 0.1 s; compilation 35 s cold.
* one cell at a real size (``sweep_heads_time_cell_batch500.json``: batch 500, n = 4096,
  500 + 1000 steps): 3.10x cold (2.99x without compilation): calibration 406 s (pilots
  278 s = 2000 steps, Lanczos 127 s = 4 calls at 4096 examples) = ~3000 main-run steps.
  So the sweep's ratio is ``1 + C / S`` with C ~ 3000 steps per cell: <= 1.5x needs
  S >= 6000 steps per cell (estimate_llc's default 4000 draws + 2000 burn-in), or a cheaper
  per-cell calibration (calibration.py: one Lanczos start at w*, fewer Lanczos examples,
  shorter pilots or the main run continuing the last pilot's chains). Batching the cells'
  pilots into one program gains ~4% on this CPU (a 4-chain pilot step 8.9 ms, a stacked
  16-chain step 8.5 ms per cell); on a GPU it is unmeasured.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time
import warnings

import jax
import jax.monitoring
import numpy as np

RESULTS = pathlib.Path(__file__).parent / "results" / "sweep_heads_time.json"
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
PHASES = ("init_loss", "cal_center_check", "cal_lanczos_center", "cal_pilots",
          "cal_lanczos_pilot_ends", "cal_gradient_noise", "cal_other", "prepare", "sampling",
          "retry_sampling", "checks", "compile", "other")


class Clock:
    """Exclusive phase times: a stack of open phases; a nested phase's time and compile time
    are taken out of the phase it ran in."""

    def __init__(self):
        self.reset()
        jax.monitoring.register_event_duration_secs_listener(self.listener)

    def reset(self):
        self.stack, self.totals, self.counts = [["other", 0.0]], {}, {}
        self.compiles, self.compile_by_phase = 0, {}

    def add(self, phase, seconds):
        self.totals[phase] = self.totals.get(phase, 0.0) + seconds

    def count(self, name):
        key = f"{name}@{'calibration' if self.inside('cal_') else self.stack[-1][0]}"
        self.counts[key] = self.counts.get(key, 0) + 1

    def inside(self, prefix):
        return any(label.startswith(prefix) for label, _ in self.stack)

    def listener(self, event, duration, **kwargs):
        if event in COMPILE_EVENTS:
            self.add("compile", duration)
            self.stack[-1][1] -= duration
            top = self.stack[-1][0]
            self.compile_by_phase[top] = self.compile_by_phase.get(top, 0.0) + duration
        if event == COMPILE_EVENTS[-1]:
            self.compiles += 1

    def wrap(self, module, name, pick, wait=False, count=None):
        """Time ``module.name`` as the phase ``pick(clock)`` (``None``: not a phase of its own)."""
        function = getattr(module, name)

        def wrapper(*args, **kwargs):
            if count:
                self.count(count)
            label = pick(self)
            if label is None:
                return function(*args, **kwargs)
            start = time.perf_counter()
            self.stack.append([label, 0.0])
            try:
                result = function(*args, **kwargs)
                if wait:
                    jax.block_until_ready(result)
            finally:
                label, taken = self.stack.pop()
                elapsed = time.perf_counter() - start
                self.add(label, elapsed + taken)
                self.stack[-1][1] -= elapsed
            return result

        setattr(module, name, wrapper)


def instrument(clock):
    from slt_jax import calibration, sampling
    from slt_jax.estimators import estimate, sweep

    def fixed(label):
        return lambda c: label

    def in_calibration(label):
        return lambda c: label if c.inside("cal_") else None

    clock.wrap(sweep, "_init_losses", fixed("init_loss"))
    clock.wrap(sweep, "_cell_samplers", fixed("cal_other"))
    clock.wrap(estimate, "checked_loss_at_center", in_calibration("cal_center_check"))
    clock.wrap(calibration, "_curvature_at_center", in_calibration("cal_lanczos_center"),
               count="lanczos_center")
    clock.wrap(calibration, "_run_pilot", in_calibration("cal_pilots"), wait=True, count="pilot")
    clock.wrap(calibration, "_measure_pilot_end", in_calibration("cal_lanczos_pilot_ends"),
               count="lanczos_pilot_end")
    clock.wrap(calibration, "_gradient_noise_control", in_calibration("cal_gradient_noise"))
    clock.wrap(sweep, "_prepare", fixed("prepare"))
    clock.wrap(sweep, "_retry_failed_cells", fixed("retry_other"))
    clock.wrap(sweep, "_run", lambda c: "retry_sampling" if c.inside("retry") else "sampling",
               wait=True, count="main_run")
    clock.wrap(sweep, "_cell_result", fixed("checks"))
    clock.wrap(sweep, "_warn_once", fixed("checks"))
    clock.wrap(sampling, "_run_block", lambda c: None, count="block_dispatch")
    clock.wrap(calibration, "sample", lambda c: None, count="sample_call")


def problem(args):
    from _transformer import trained_transformer  # benchmarks/: the shared model

    loss_fn, run, _, data, masks = trained_transformer(
        examples=args.examples, train_steps=args.train_steps, checkpoints=args.checkpoints)
    return loss_fn, run, data, dict(list(masks.items())[:args.heads])


def timed_call(clock, function):
    import slt_jax as slt

    clock.reset()
    with slt.count_compilations() as counter, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start, cpu = time.perf_counter(), time.process_time()
        value = function()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    phases = {k: v for k, v in clock.totals.items()}
    phases["retry_sampling"] = phases.get("retry_sampling", 0.0)
    phases["other"] = phases.get("other", 0.0) + phases.pop("retry_other", 0.0)
    phases["other"] += wall - sum(phases.values())
    return value, dict(wall_seconds=wall, cpu_seconds=cpu, compilations=counter.count,
                       phases=phases, compile_by_phase=dict(clock.compile_by_phase),
                       counts=dict(clock.counts), load_average=os.getloadavg(),
                       warnings=sorted({str(w.message)[:160] for w in caught}))


def sweep_call(loss_fn, checkpoints, data, masks, args, seed):
    import slt_jax as slt

    return slt.llc_over_checkpoints(
        loss_fn, checkpoints, data, key=jax.random.key(seed), masks=masks, num_chains=args.chains,
        num_draws=args.draws, num_burnin=args.burnin, batch_size=args.batch_size,
    )


def bare_sampling(loss_fn, checkpoints, data, masks, args, result):
    """The sweep's chain-steps as bare ``slt.sample`` calls: one per checkpoint, heads x chains
    chains (the sweep's main-run shape), median calibrated hyperparameters, head 0's mask."""
    import slt_jax as slt

    hp = result.hyperparameters
    sampler = slt.samplers.sghmc(float(np.median(hp["step_size"])),
                                 nbeta=float(np.median(hp["nbeta"])),
                                 localization=float(np.median(hp["localization"])),
                                 friction=float(np.median(hp["friction"])),
                                 mask=next(iter(masks.values())))
    count = jax.tree.leaves(checkpoints)[0].shape[0]

    def run():
        for c in range(count):
            params = jax.tree.map(lambda x: x[c], checkpoints)
            trace = slt.sample(loss_fn, params, data, sampler, key=jax.random.key(100 + c),
                               num_chains=len(masks) * args.chains, num_draws=args.draws,
                               num_burnin=args.burnin, batch_size=args.batch_size,
                               store=("loss",))
            jax.block_until_ready(trace.loss)

    return run


def summarize(rows, bare, args, cells):
    """Ratios to the bare sampling steps, and the calibration in main-run step equivalents."""
    steps = args.burnin + args.draws
    for row in rows:
        p = row["phases"]
        calibration = sum(v for k, v in p.items() if k.startswith("cal_"))
        row["calibration_seconds"] = calibration
        row["ratio_to_bare_sampling"] = row["wall_seconds"] / bare["wall_seconds"]
        row["ratio_to_own_sampling"] = row["wall_seconds"] / p["sampling"]
        row["ratio_without_compile"] = (row["wall_seconds"] - p.get("compile", 0.0)) / bare["wall_seconds"]
        row["cpu_ratio_to_bare_sampling"] = row["cpu_seconds"] / bare["cpu_seconds"]
        # seconds of one main-run step of one cell (chains x batch), from the bare runs
        step_cell = bare["wall_seconds"] / (cells * steps)
        row["calibration_step_equivalents_per_cell"] = calibration / cells / step_cell
        row["rest_seconds"] = row["wall_seconds"] - calibration - p["sampling"]
    return rows


def print_table(rows, bare, args, cells):
    print(f"\n{args.heads} heads x {args.checkpoints} checkpoints = {cells} cells, "
          f"{args.chains} chains x ({args.burnin} + {args.draws}) steps, batch {args.batch_size}, "
          f"n = {args.examples}")
    print("phase".ljust(24) + "".join(f"{r['call']:>10s}" for r in rows))
    for phase in PHASES:
        print(phase.ljust(24) + "".join(f"{r['phases'].get(phase, 0.0):10.2f}" for r in rows))
    for name in ("wall_seconds", "cpu_seconds", "compilations", "ratio_to_bare_sampling",
                 "cpu_ratio_to_bare_sampling", "ratio_to_own_sampling", "ratio_without_compile",
                 "calibration_step_equivalents_per_cell"):
        print(name.ljust(24) + "".join(f"{r[name]:10.2f}" for r in rows))
    print("load (1 min)".ljust(24) + "".join(f"{r['load_average'][0]:10.2f}" for r in rows))
    print(f"bare sample (same chain-steps): {bare['wall_seconds']:.2f} s wall, "
          f"{bare['cpu_seconds']:.2f} CPU-s (first pass, compiling: {bare['first_wall']:.2f} s)")
    for row in rows:
        print(f"{row['call']}: counts {row['counts']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=4, help="components (<= 8: L0H0..L1H3)")
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--burnin", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=1024, help="training/sampling sequences")
    parser.add_argument("--train-steps", type=int, default=2000)
    parser.add_argument("--keep-last", type=int, default=0,
                        help="sweep only the last K of the checkpoints (0: all)")
    parser.add_argument("--calls", type=int, default=2, help="2: cold and warm; 1: cold only")
    parser.add_argument("--bare-passes", type=int, default=2,
                        help="2: the bare steps' second pass; 1: its first less its compile time")
    parser.add_argument("--quick", action="store_true", help="2 heads x 2 checkpoints, 40 draws")
    parser.add_argument("--output", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.heads, args.checkpoints, args.draws, args.burnin, args.train_steps = 2, 2, 40, 20, 200
    clock = Clock()
    import_start = time.perf_counter()
    import slt_jax  # noqa: F401
    instrument(clock)
    import_seconds = time.perf_counter() - import_start
    from flax import nnx

    loss_fn, run, data, masks = problem(args)
    checkpoints = nnx.to_pure_dict(run.checkpoints)
    if args.keep_last:  # e.g. one trained checkpoint for a single cell at a real size
        checkpoints = jax.tree.map(lambda x: x[-args.keep_last:], checkpoints)
        args.checkpoints = args.keep_last
    jax.block_until_ready(checkpoints)
    cells = args.heads * args.checkpoints
    rows = []
    for call, seed in (("cold", 10), ("warm", 11))[:args.calls]:
        result, row = timed_call(clock, lambda: sweep_call(loss_fn, checkpoints, data, masks,
                                                           args, seed))
        hp = result.hyperparameters
        row.update(call=call, seed=seed, num_runs=hp["num_runs"], cells_per_run=hp["cells_per_run"],
                   step_size_halvings=int(np.sum(hp["step_size_halvings"])),
                   calibration_rounds=[len(c.rounds) for row_ in hp["calibration"] for c in row_],
                   step_size_range=[float(np.min(hp["step_size"])), float(np.max(hp["step_size"]))],
                   friction_range=[float(np.min(hp["friction"])), float(np.max(hp["friction"]))],
                   mean_llc=result.mean.tolist(), mcse=result.mcse.tolist())
        rows.append(row)
        print(f"{call}: {row['wall_seconds']:.1f} s, {row['compilations']} compilations", flush=True)
    run_bare = bare_sampling(loss_fn, checkpoints, data, masks, args, result)
    _, first = timed_call(clock, run_bare)
    bare = first
    if args.bare_passes > 1:
        _, bare = timed_call(clock, run_bare)
    else:  # one pass (real sizes): its compile time taken out
        bare = dict(first, wall_seconds=first["wall_seconds"] - first["phases"].get("compile", 0.0),
                    cpu_seconds=first["cpu_seconds"] - first["phases"].get("compile", 0.0))
    bare.update(first_wall=first["wall_seconds"], first_compilations=first["compilations"])
    rows = summarize(rows, bare, args, cells)
    print_table(rows, bare, args, cells)
    record = dict(
        setting=dict(heads=args.heads, checkpoints=args.checkpoints, cells=cells,
                     chains=args.chains, draws=args.draws, burnin=args.burnin,
                     batch_size=args.batch_size, examples=args.examples,
                     train_steps=args.train_steps, bare_passes=args.bare_passes, model="AttentionOnlyTransformer(16, 16, "
                     "d_model=32, num_heads=4, d_head=8), 2 layers"),
        time=time.ctime(), import_seconds=import_seconds, calls=rows, bare_sampling=bare,
        cpu_affinity=sorted(os.sched_getaffinity(0)), machine=platform.platform(),
        devices=str(jax.devices()),
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2, default=float))
    print("wrote", args.output)


if __name__ == "__main__":
    main()
