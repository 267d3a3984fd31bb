"""Progress-bar overhead and sampling memory.

1. Progress: the same DLN sampling run (4 chains, batch 256) with ``progress=True`` (a tqdm bar
   updated by the host after each block of draws, which it waits for) and ``progress=False``,
   alternated, median of repeats, compile excluded. Goal: overhead ≤ 5%.
2. Memory: XLA's memory analysis of the compiled block program
   (``slt_jax.sampling.compiled_memory``) plus the stored trace, for MLPs of growing size at 4
   chains, then the largest parameter count whose run fits in this machine's memory, from a
   linear fit of bytes vs parameters.

    python benchmarks/progress_memory.py

Writes ``benchmarks/results/progress_memory.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import slt_jax as slt
from slt_jax.data import make_dln_data, make_dln_teacher
from slt_jax.models import count_parameters, dln_loss, mlp_init, mlp_loss
from slt_jax.sampling import compiled_memory

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def progress_overhead(repeats=5, num_draws=5000):
    teacher = make_dln_teacher(jax.random.key(0), [10, 10, 10])
    data = make_dln_data(jax.random.key(1), teacher.params, 10_000)
    sampler = slt.samplers.sgld(1e-6, slt.default_nbeta(10_000), 1.0)
    kwargs = dict(num_chains=4, num_draws=num_draws, batch_size=256)

    def run(progress, seed):
        start = time.perf_counter()
        trace = slt.sample(dln_loss, teacher.params, data, sampler, key=jax.random.key(seed),
                           progress=progress, **kwargs)
        jax.block_until_ready(trace.loss)
        return time.perf_counter() - start

    run(False, 0)
    run(True, 0)  # compile both
    times = {False: [], True: []}
    for repeat in range(repeats):
        for progress in (False, True):
            times[progress].append(run(progress, repeat + 1))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    return {
        "task": "DLN 10-10-10, 4 chains, batch 256",
        "num_draws": num_draws,
        "seconds_progress_off": off,
        "seconds_progress_on": on,
        "progress_overhead_ratio": on / off,
        "all_seconds_off": times[False],
        "all_seconds_on": times[True],
    }


def memory_scaling(widths_list=((256, 256, 256, 10), (512, 512, 512, 10), (1024, 1024, 1024, 10),
                                (2048, 2048, 2048, 10))):
    rows = []
    for widths in widths_list:
        params = mlp_init(jax.random.key(0), list(widths))
        x = jnp.zeros((4096, widths[0]))
        y = jnp.zeros((4096, widths[-1]))
        sampler = slt.samplers.sgld(1e-6, 1000.0, 1.0)
        memory = compiled_memory(mlp_loss, params, (x, y), sampler, key=jax.random.key(0),
                                 num_chains=4, num_draws=1000, batch_size=256)
        rows.append({"widths": list(widths), "parameters": count_parameters(params), **memory})
        print(rows[-1], flush=True)
    parameters = np.array([r["parameters"] for r in rows], float)
    totals = np.array([r["total"] for r in rows], float)
    slope, intercept = np.polyfit(parameters, totals, 1)
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    budget = 0.8 * available  # leave room for the Python process and XLA's own buffers
    return {
        "rows": rows,
        "bytes_per_parameter_at_4_chains": slope,
        "fixed_bytes": intercept,
        "machine_memory_bytes": available,
        "largest_parameters_fitting_at_4_chains": int((budget - intercept) / slope),
    }


def main():
    results = {
        "machine": {"jax": jax.__version__, "backend": jax.default_backend(),
                    "cpu_count": os.cpu_count()},
        "progress": progress_overhead(),
    }
    print(json.dumps(results["progress"], indent=1))
    results["memory"] = memory_scaling()
    print({k: v for k, v in results["memory"].items() if k != "rows"})
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "progress_memory.json"), "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
