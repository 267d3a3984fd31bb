"""How many examples the calibration's top-Hessian-eigenvalue needs (issue 20).

The calibration measures λ_max(H) by Lanczos on a random subset of at most ``max_examples``
examples (4096) at w* and where each round's pilot chains end. A smaller subset would make
those calls cheaper (on the 50k-parameter DLN they are ~40% of the calibration). This
compares, on the DLN suite's first instances (n = 10,000, the suite's teachers and data), the
top eigenvalue on subsets of 4096 (3 subsets) and 1024 (5 subsets) examples with the full
data, at w* and at the pilots' endpoints of one ``calibrate_step_size`` call (20 Lanczos steps,
so the iteration error is negligible).

    python benchmarks/calibration_subset.py [num_instances]

Writes ``benchmarks/results/calibration_subset.json`` (ratios subset / full per point).
Finding (2026-12-06): 4096 examples read 0.95–1.05 of the full-data value; 1024 read
0.93–1.19, mostly high (the top eigenvalue of a noisier matrix is biased up), +10–19% on the
larger networks ([41, 104, 131], [57, 15, 75]): 4× cheaper calls, but step sizes up to 16%
smaller, so 4096 stays.
"""

import json
import pathlib
import sys

import jax
import numpy as np

from slt_jax import calibration as C
from slt_jax._structural import StructuralKey
from slt_jax.benchmark import suite_instances
from slt_jax.data import make_dln_data, make_dln_teacher
from slt_jax.models import dln_loss

RESULTS = pathlib.Path(__file__).parent / "results" / "calibration_subset.json"


def main(count: int) -> None:
    captured = []
    measure = C._max_eigenvalue

    def grab(problem, chain_params, key):  # the points the calibration measures at
        captured.append(chain_params)
        return measure(problem, chain_params, key)

    C._max_eigenvalue = grab
    rows = []
    for widths, seed in suite_instances()[:count]:
        teacher = make_dln_teacher(jax.random.key(1000 + seed), widths, minimal_rank=True)
        data = make_dln_data(jax.random.key(2000 + seed), teacher.params, 10_000)
        n = 10_000
        captured.clear()
        C.calibrate_step_size(dln_loss, teacher.params, data, key=jax.random.key(3000 + seed),
                              nbeta=n / np.log(n), localization=1.0, sampler_name="sghmc",
                              batch_size=500)
        for where, points in enumerate(captured):
            values = {}
            for size, repeats in ((n, 1), (4096, 3), (1024, 5)):
                values[size] = []
                for r in range(repeats):
                    indices = C._subset_indices(n, jax.random.key(100 + r), size)
                    top = C._top_eigenvalues_at(points, data, indices, jax.random.key(7), None,
                                                loss_fn=StructuralKey(dln_loss),
                                                num_iterations=20, chunk_size=256)
                    values[size].append(float(np.max(np.asarray(top))))
            full = values[n][0]
            rows.append(dict(widths=widths, where="w*" if where == 0 else f"pilot {where}",
                             full=full, r4096=[v / full for v in values[4096]],
                             r1024=[v / full for v in values[1024]]))
            print(widths, rows[-1]["where"], round(full, 3), "4096:",
                  np.round(rows[-1]["r4096"], 3), "1024:", np.round(rows[-1]["r1024"], 3),
                  flush=True)
    RESULTS.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 9)
