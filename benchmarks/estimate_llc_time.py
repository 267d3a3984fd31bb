"""Cold and warm wall time of ``estimate_llc``, and how many programs it compiles.

Each model runs in a fresh Python process (no persistent compilation cache): the first
``estimate_llc`` call is "cold" (every program is traced and compiled), a second call with a
new key in the same process is "warm". XLA compilations are counted with a
``jax.monitoring`` listener on backend compiles.

Models: the demo's DLN [12, 10, 14] (n = 10,000, 4 chains x 4000 draws, the defaults) and
the 101k-parameter ReLU MLP 128-256-256-10 of ``vs_devinterp.py`` (n = 10,000, 4 chains x
500 draws so that a run fits in a minute on two cores).

    python benchmarks/estimate_llc_time.py [--label after] [--models dln mlp]

Writes ``benchmarks/results/estimate_llc_time_<label>.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

RESULTS = pathlib.Path(__file__).parent / "results"

CHILD = r"""
import json, sys, time
import jax, jax.monitoring
import numpy as np

compiles = [0]
def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        compiles[0] += 1
jax.monitoring.register_event_duration_secs_listener(listener)

import slt_jax as slt
model = sys.argv[1]
if model == "dln":
    from slt_jax.data import make_dln_data, make_dln_teacher
    from slt_jax.models import dln_loss as loss_fn
    teacher = make_dln_teacher(jax.random.key(0), [12, 10, 14], minimal_rank=True)
    params = teacher.params
    data = make_dln_data(jax.random.key(1), params, 10_000)
    options = dict(num_draws=4000)
else:
    from slt_jax.models import mlp_apply, mlp_init, mlp_loss as loss_fn
    params = mlp_init(jax.random.key(1), [128, 256, 256, 10])
    x = jax.random.normal(jax.random.key(2), (10_000, 128))
    data = (x, mlp_apply(params, x))
    options = dict(num_draws=500)
jax.block_until_ready(data)
rows = []
for call, seed in (("cold", 10), ("warm", 11)):
    before = compiles[0]
    start = time.perf_counter()
    result = slt.estimate_llc(loss_fn, params, data, key=jax.random.key(seed), **options)
    rows.append(dict(call=call, wall_seconds=time.perf_counter() - start,
                     compilations=compiles[0] - before, llc=result.mean, mcse=result.mcse))
print("RESULT " + json.dumps(rows))
"""


def run_model(model: str) -> list:
    output = subprocess.run(
        [sys.executable, "-c", CHILD, model], capture_output=True, text=True, check=True
    ).stdout
    line = next(l for l in output.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", default="after")
    parser.add_argument("--models", nargs="+", default=["dln", "mlp"])
    args = parser.parse_args()
    import jax

    results = {"jax": jax.__version__, "label": args.label, "time": time.ctime(), "models": {}}
    for model in args.models:
        rows = run_model(model)
        results["models"][model] = rows
        for row in rows:
            print(f"{model:4s} {row['call']:5s} {row['wall_seconds']:7.2f} s  "
                  f"{row['compilations']:3d} compilations  LLC {row['llc']:.2f} ± {row['mcse']:.2f}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"estimate_llc_time_{args.label}.json"
    path.write_text(json.dumps(results, indent=2))
    print("wrote", path)


if __name__ == "__main__":
    main()
