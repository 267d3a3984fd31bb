r"""Stagewise BIF (issue 19): one compiled program over checkpoints vs a loop of estimate_bif.

The task: a tanh MLP with widths 4-16-16-1 trained by Adam (lr 1e-2, batch 64) on
``y = sin(x₁) + x₂x₃ + 0.1 ξ`` (``x ~ N(0, I₄)``), ``--train`` training and ``--query`` query
examples, ``--checkpoints`` log-spaced checkpoints of ``--steps`` training steps
(``slt.training.train``). At every checkpoint the BIF ``(n, q)`` with its MCSE is estimated with
``estimate_bif``'s policy (calibrated SGHMC per checkpoint, nβ = n, γ = 1, batch 500 for
n > 500) and ``--draws`` draws per chain (fixed, so both sides do the same work):

* ``sweep``: ``slt.bif_over_checkpoints(loss, run, train, query, key=key, num_draws=D)``, all
  checkpoints stacked along the chain axis of one block program;
* ``loop``: ``[slt.estimate_bif(loss, checkpoint_t, train, query, key=fold_in(key, t),
  num_draws=D) for t]`` (the keys the sweep gives checkpoint t).

Each side runs in a fresh subprocess (``--one sweep|loop``): wall time (calibration included),
XLA compilations (``slt.count_compilations``), peak RSS (``resource.getrusage``, includes the
interpreter and JAX, ~0.5 GiB) and the BIFs, compared entry by entry afterwards (z = difference
/ √(MCSE₁² + MCSE₂²); the loop's ``estimate_bif`` may rerun a checkpoint at a larger batch after
its end-of-run gradient-noise check, which the sweep does not, so slices need not be equal).

How to run::

    .venv/bin/python benchmarks/dynamics_scale.py                       # 20 x 1000 x 100
    .venv/bin/python benchmarks/dynamics_scale.py --checkpoints 5 --draws 200   # smaller

Writes ``benchmarks/results/dynamics_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import slt_jax as slt
from slt_jax.models import mlp_init, mlp_loss

RESULTS = os.path.join(os.path.dirname(__file__), "results", "dynamics_scale.json")


def loss_fn(params, batch):
    """½(f(x) − y)² per example, tanh MLP."""
    return mlp_loss(params, (batch["x"], batch["y"]), activation=jnp.tanh)


def task(arguments):
    key = jax.random.key(0)
    total = arguments.train + arguments.query
    x = jax.random.normal(jax.random.fold_in(key, 1), (total, 4))
    y = (jnp.sin(x[:, :1]) + x[:, 1:2] * x[:, 2:3]
         + 0.1 * jax.random.normal(jax.random.fold_in(key, 2), (total, 1)))
    train = {"x": x[:arguments.train], "y": y[:arguments.train]}
    query = {"x": x[arguments.train:], "y": y[arguments.train:]}
    run = slt.training.train(mlp_init(jax.random.fold_in(key, 3), [4, 16, 16, 1]), loss_fn, train,
                             optax.adam(1e-2), key=jax.random.fold_in(key, 4),
                             num_steps=arguments.steps, batch_size=64,
                             num_checkpoints=arguments.checkpoints)
    return run, train, query


def one(arguments):
    run, train, query = task(arguments)
    key = jax.random.key(5)
    start = time.perf_counter()
    with slt.count_compilations() as counter, __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")
        if arguments.one == "sweep":
            result = slt.bif_over_checkpoints(loss_fn, run, train, query, key=key,
                                              num_draws=arguments.draws)
            bif, mcse = result.bif, result.mcse
        else:
            pairs = []
            for index in range(run.num_checkpoints):
                single = slt.estimate_bif(loss_fn, run.checkpoint(index), train, query,
                                          key=jax.random.fold_in(key, index),
                                          num_draws=arguments.draws)
                pairs.append((np.asarray(single.bif), np.asarray(single.mcse)))
            bif, mcse = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    wall = time.perf_counter() - start
    np.savez(arguments.output, bif=bif, mcse=mcse)
    print(json.dumps(dict(
        wall_s=wall, compilations=counter.count,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", type=int, default=20)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--query", type=int, default=100)
    parser.add_argument("--draws", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--one", choices=("sweep", "loop"))
    parser.add_argument("--output")
    arguments = parser.parse_args()
    if arguments.one:
        return one(arguments)
    sizes = ["--checkpoints", str(arguments.checkpoints), "--train", str(arguments.train),
             "--query", str(arguments.query), "--draws", str(arguments.draws),
             "--steps", str(arguments.steps)]
    measured, arrays = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for side in ("sweep", "loop"):
            output = os.path.join(folder, f"{side}.npz")
            completed = subprocess.run([sys.executable, __file__, "--one", side, "--output", output,
                                        *sizes], capture_output=True, text=True, check=True)
            measured[side] = json.loads(completed.stdout.strip().splitlines()[-1])
            arrays[side] = dict(np.load(output))
            print(side, measured[side], flush=True)
    z = (arrays["sweep"]["bif"] - arrays["loop"]["bif"]) / np.sqrt(
        arrays["sweep"]["mcse"] ** 2 + arrays["loop"]["mcse"] ** 2)
    report = dict(
        task=dict(vars(arguments), one=None, output=None, model="tanh MLP 4-16-16-1"),
        sweep=measured["sweep"], loop=measured["loop"],
        speedup=measured["loop"]["wall_s"] / measured["sweep"]["wall_s"],
        agreement=dict(max_abs_z=float(np.max(np.abs(z))), mean_z2=float(np.mean(z**2)),
                       identical_fraction=float(np.mean(arrays["sweep"]["bif"]
                                                        == arrays["loop"]["bif"]))),
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(),
                     load_average=os.getloadavg(), jax=jax.__version__,
                     device=str(jax.devices()[0])),
    )
    print(json.dumps(report, indent=1))
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as handle:
        json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
