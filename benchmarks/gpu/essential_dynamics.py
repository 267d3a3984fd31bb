"""Essential dynamics of in-context linear regression at the real size (run on an accelerator).

The transient-ridge experiment of arXiv 2501.17745 with slt_jax's pieces: the zoo's
``InContextRegressionTransformer`` is trained (``slt.training.train``, Adam) on sequences whose
tasks come from a finite set of ``M`` tasks, for several task diversities ``M`` (``0`` = fresh
tasks from the prior, ``M = ∞``). Every checkpoint's predictions on one fixed probe set (tasks
from the prior) are the rows of one joint trajectory PCA (``slt.trajectory_pca``); ridge and
each run's dMMSE predictions on the probe are projected as references, never fitted. Per
checkpoint it records the RMS distance of the predictions to ridge and to the run's dMMSE, the
out-of-distribution loss (probe, tasks from the prior) and the in-distribution loss (tasks of
the run's set), the turning points of each path (``slt.trajectory_turning_points``) and
the LLC over checkpoints (``slt.llc_over_checkpoints``, the fixed setting of arXiv 2410.02984).

It then checks the **transient-ridge signature** at the intermediate diversity
(``--intermediate``): (1) the distance to ridge is smallest at an interior checkpoint and the
final distance exceeds that minimum by ``--margin`` (relative); (2) the run ends nearer its
dMMSE than ridge; (3) the OOD loss is non-monotone: its minimum is interior and the final OOD
loss exceeds it by ``--margin``. Results (and the pass/fail of each check) go to a JSON file.

Usage (repository root; ``--small`` is a seconds-long CPU run that checks the plumbing only,
its signature checks are not expected to pass)::

    python benchmarks/gpu/essential_dynamics.py --output benchmarks/results/gpu/essential_dynamics.json
    JAX_PLATFORMS=cpu python benchmarks/gpu/essential_dynamics.py --small --output /tmp/ed.json

With the device tool: where the image's ``python3`` has JAX (CUDA), optax and flax, from the
repository root ``PYTHONPATH=. python3 benchmarks/gpu/essential_dynamics.py --output
$OUT/essential_dynamics.json``; otherwise first make the venv of ``run.sh`` (``STEPS=setup bash
benchmarks/gpu/run.sh`` with ``carry: ["benchmarks/gpu/wheelhouse"]``) and use its python.

The real size (defaults) follows the paper's setting at a smaller scale: task dimension 8,
16 context pairs, 2 layers of width 64 with 4 heads, batch 256, Adam 1e-3, 60k steps, 40
log-spaced checkpoints, ``M`` in {4, 64, 1024, ∞}. On this 2-core CPU a step of the width-32
model costs ≈ 7–22 ms (load dependent), so the real size (~4 × 60k steps) is for an
accelerator; it has not been run yet (no device was lent when it was written), so the
intermediate ``M`` and the step count are a first guess to be revised after one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import slt_jax as slt

REAL = dict(task_dim=8, num_context=16, d_model=64, num_layers=2, num_heads=4, d_head=16,
            mlp_width=128, batch_size=256, learning_rate=1e-3, num_steps=60_000,
            num_checkpoints=40, num_sequences=2**16, probe_size=256, tasks=[4, 64, 1024, 0],
            intermediate=64, llc_chains=4, llc_draws=200, llc_burnin=100, llc_checkpoints=12)
SMALL = dict(task_dim=4, num_context=8, d_model=16, num_layers=1, num_heads=2, d_head=8,
             mlp_width=32, batch_size=32, learning_rate=1e-3, num_steps=200,
             num_checkpoints=10, num_sequences=1024, probe_size=32, tasks=[4, 16, 0],
             intermediate=16, llc_chains=2, llc_draws=30, llc_burnin=10, llc_checkpoints=3)


def _label(num_tasks: int) -> str:
    return "M=inf" if num_tasks == 0 else f"M={num_tasks}"


def _predict(model, batch):
    return model(batch["x"], batch["y"])


def train_run(num_tasks: int, config: dict, probe: dict, key) -> dict:
    """Train one run; its outputs on the probe and on in-distribution data per checkpoint."""
    task_key, data_key, train_key, eval_key, init_key = jax.random.split(key, 5)
    dim, length = config["task_dim"], config["num_context"]
    tasks = slt.data.make_icl_tasks(task_key, num_tasks, dim) if num_tasks else None
    data = slt.data.make_icl_data(data_key, config["num_sequences"], tasks, task_dim=dim,
                                  num_context=length)
    data = {"x": data["x"], "y": data["y"]}
    in_distribution = slt.data.make_icl_data(eval_key, config["probe_size"], tasks, task_dim=dim,
                                             num_context=length)
    model = slt.models.InContextRegressionTransformer(
        dim, length, d_model=config["d_model"], num_layers=config["num_layers"],
        num_heads=config["num_heads"], d_head=config["d_head"], mlp_width=config["mlp_width"],
        rngs=nnx.Rngs(int(jax.random.randint(init_key, (), 0, 2**30))))
    start = time.perf_counter()
    run = slt.training.train(model, slt.models.icl_loss, data, optax.adam(config["learning_rate"]),
                             key=train_key, num_steps=config["num_steps"],
                             batch_size=config["batch_size"],
                             num_checkpoints=config["num_checkpoints"])
    jax.block_until_ready(run.params)
    train_seconds = time.perf_counter() - start
    outputs = slt.trajectory_outputs(_predict, run, probe)
    id_outputs = slt.trajectory_outputs(_predict, run, in_distribution)
    id_loss = np.mean(np.square(id_outputs - np.asarray(in_distribution["y"]).reshape(1, -1)), 1)
    dmmse = None
    if tasks is not None:
        dmmse = np.asarray(slt.data.dmmse_predictions(tasks, probe["x"], probe["y"])).reshape(-1)
    return dict(model=model, run=run, data=data, outputs=outputs, id_loss=id_loss, dmmse=dmmse,
                train_seconds=train_seconds)


def distances(runs: dict, ridge: np.ndarray, probe_y: np.ndarray) -> dict:
    """Per run and checkpoint: RMS distance to ridge and to its dMMSE, OOD loss."""
    table = {}
    for label, result in runs.items():
        outputs = result["outputs"]
        entry = {"to_ridge": np.sqrt(np.mean(np.square(outputs - ridge[None]), 1)),
                 "ood_loss": np.mean(np.square(outputs - probe_y[None]), 1),
                 "id_loss": result["id_loss"]}
        if result["dmmse"] is not None:
            entry["to_dmmse"] = np.sqrt(np.mean(np.square(outputs - result["dmmse"][None]), 1))
        table[label] = entry
    return table


def signature(entry: dict, margin: float) -> dict:
    """The three transient-ridge checks on one run's per-checkpoint table."""
    to_ridge, ood = entry["to_ridge"], entry["ood_loss"]
    last = len(to_ridge) - 1
    closest = int(np.argmin(to_ridge))
    best_ood = int(np.argmin(ood))
    checks = {
        "ridge_closest_mid_training": bool(0 < closest < last
                                           and to_ridge[-1] > (1 + margin) * to_ridge[closest]),
        "ends_nearer_dmmse_than_ridge": bool(entry["to_dmmse"][-1] < to_ridge[-1]),
        "ood_loss_non_monotone": bool(0 < best_ood < last and ood[-1] > (1 + margin) * ood[best_ood]),
    }
    checks.update(closest_to_ridge_checkpoint=closest, ood_minimum_checkpoint=best_ood)
    return checks


def llc_curves(runs: dict, config: dict, key) -> dict:
    """LLC over (a log-spaced subset of) each run's checkpoints, the fixed paper setting."""
    curves = {}
    for index, (label, result) in enumerate(runs.items()):
        run = result["run"]
        count = min(config["llc_checkpoints"], run.num_checkpoints)
        chosen = np.unique(np.rint(np.linspace(0, run.num_checkpoints - 1, count)).astype(int))
        loss_fn, _ = slt.adapters.from_nnx(result["model"], slt.models.icl_loss)
        subset = jax.tree.map(lambda leaf: leaf[chosen], run.checkpoints)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sweep = slt.llc_over_checkpoints(
                loss_fn, subset, result["data"], key=jax.random.fold_in(key, index),
                sampler="refined_llc_paper", num_chains=config["llc_chains"],
                num_draws=config["llc_draws"], num_burnin=config["llc_burnin"])
        curves[label] = dict(steps=run.steps[chosen].tolist(), mean=sweep.mean[:, 0].tolist(),
                             mcse=sweep.mcse[:, 0].tolist(),
                             seconds=sweep.hyperparameters.get("wall_time_seconds"))
    return curves


def experiment(config: dict, *, seed: int = 0, llc: bool = True, margin: float = 0.1) -> dict:
    """Train every ``M``, run the joint PCA and the checks; return a JSON-ready dict."""
    key = jax.random.key(seed)
    probe_key, run_key, llc_key = jax.random.split(key, 3)
    probe = slt.data.make_icl_data(probe_key, config["probe_size"], None,
                                   task_dim=config["task_dim"], num_context=config["num_context"])
    probe = {"x": probe["x"], "y": probe["y"]}
    ridge = np.asarray(slt.data.ridge_predictions(probe["x"], probe["y"])).reshape(-1)
    runs = {_label(m): train_run(m, config, probe, jax.random.fold_in(run_key, m))
            for m in config["tasks"]}
    references = {"ridge": ridge}
    references.update({f"dMMSE {label}": r["dmmse"] for label, r in runs.items()
                       if r["dmmse"] is not None})
    ed = slt.trajectory_pca({label: r["outputs"] for label, r in runs.items()},
                            num_components=3, references=references)
    turning = {label: slt.trajectory_turning_points(ed.scores[label], r["run"].steps)
               for label, r in runs.items()}
    table = distances(runs, ridge, np.asarray(probe["y"]).reshape(-1))
    result = dict(
        config=config,
        steps={label: r["run"].steps.tolist() for label, r in runs.items()},
        train_seconds={label: r["train_seconds"] for label, r in runs.items()},
        explained_variance_ratio=ed.explained_variance_ratio.tolist(),
        scores={label: ed.scores[label].tolist() for label in runs},
        reference_scores={name: value.tolist() for name, value in ed.reference_scores.items()},
        reference_residuals=ed.reference_residuals,
        turning_points={label: tp.steps.tolist() for label, tp in turning.items()},
        per_checkpoint={label: {k: v.tolist() for k, v in entry.items()}
                        for label, entry in table.items()},
        signature=signature(table[_label(config["intermediate"])], margin),
    )
    if llc:
        result["llc"] = llc_curves(runs, config, llc_key)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny CPU sizes (plumbing only)")
    parser.add_argument("--steps", type=int, help="training steps per run")
    parser.add_argument("--tasks", type=int, nargs="+", help="task diversities M (0 = ∞)")
    parser.add_argument("--intermediate", type=int, help="the M whose signature is checked")
    parser.add_argument("--no-llc", action="store_true", help="skip the LLC over checkpoints")
    parser.add_argument("--margin", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="benchmarks/results/gpu/essential_dynamics.json")
    arguments = parser.parse_args(argv)
    config = dict(SMALL if arguments.small else REAL)
    for name, value in (("num_steps", arguments.steps), ("tasks", arguments.tasks),
                        ("intermediate", arguments.intermediate)):
        if value is not None:
            config[name] = value
    if config["intermediate"] not in config["tasks"] or config["intermediate"] == 0:
        parser.error(f"--intermediate {config['intermediate']} must be a finite M in --tasks")
    start = time.perf_counter()
    result = experiment(config, seed=arguments.seed, llc=not arguments.no_llc,
                        margin=arguments.margin)
    result.update(wall_seconds=time.perf_counter() - start, device=str(jax.devices()[0]),
                  backend=jax.default_backend(), jax=jax.__version__,
                  python=platform.python_version(), small=arguments.small)
    import pathlib

    path = pathlib.Path(arguments.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps({"signature": result["signature"],
                      "explained_variance_ratio": result["explained_variance_ratio"],
                      "turning_points": result["turning_points"],
                      "train_seconds": result["train_seconds"],
                      "wall_seconds": round(result["wall_seconds"], 1)}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
