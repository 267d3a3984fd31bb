"""Do the error bars match the spread of independent reruns? (issue 9)

For four problems (the polynomial x·w0·w1² on noise, a 2-weight noisy linear regression, a
small minimal-rank DLN and a small trained tanh MLP) run ``estimate_llc`` with ``K`` keys
(data fixed, only the sampling key changes) and compare the standard deviation of the
estimates with the mean reported MCSE (target ratio 0.6-1.6), and the mean with the exact
value where there is one. Writes ``benchmarks/results/error_bars.json``.

    python benchmarks/error_bars.py [--keys 12] [--draws 2000] [--problems poly,regression,...]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
import warnings

import jax
import numpy as np

import slt_jax as slt
from slt_jax.data import (
    linear_regression_problem,
    make_dln_data,
    make_dln_teacher,
    polynomial_problem,
    trained_mlp_problem,
)
from slt_jax.models import dln_loss


def problems(names):
    out = {}
    if "poly" in names:
        p = polynomial_problem(jax.random.key(0))
        out["poly"] = (p.loss_fn, p.params, p.data, p.exact_llc(slt.default_nbeta(1000)))
    if "regression" in names:
        p = linear_regression_problem(jax.random.key(0))
        out["regression"] = (p.loss_fn, p.params, p.data, p.exact_llc(slt.default_nbeta(5000)))
    if "dln" in names:
        t = make_dln_teacher(jax.random.key(3), [5, 4, 3, 4], minimal_rank=True)
        data = make_dln_data(jax.random.key(4), t.params, 5000)
        out["dln"] = (dln_loss, t.params, data, float(t.true_lambda))
    if "mlp" in names:
        loss_fn, params, data = trained_mlp_problem(
            jax.random.key(5), num_samples=2000, widths=(2, 16, 1), num_steps=3000)
        out["mlp"] = (loss_fn, params, data, None)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=12)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--problems", default="poly,regression,dln,mlp")
    parser.add_argument("--out", default="benchmarks/results/error_bars.json")
    parser.add_argument("--options", default="{}", help="JSON dict of estimate_llc options")
    args = parser.parse_args()
    extra = json.loads(args.options)
    results = {}
    for name, (loss_fn, params, data, exact) in problems(args.problems.split(",")).items():
        rows = []
        start = time.perf_counter()
        for k in range(args.keys):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                r = slt.estimate_llc(loss_fn, params, data, key=jax.random.key(100 + k),
                                     num_draws=args.draws, **extra)
            kept = np.delete(r.draws, list(r.diverged_chains) + list(r.runaway_chains), 0)
            batches = kept[:, : kept.shape[1] // 8 * 8].reshape(kept.shape[0], 8, -1).mean(-1)
            rows.append(dict(mean=r.mean, mcse=r.mcse, rhat=r.rhat, ess=r.ess,
                             mcse_batch_means=float(batches.std(ddof=1) / np.sqrt(batches.size)),
                             mcse_chains=float(r.std / np.sqrt(kept.shape[0])),
                             std_chains=r.std, step_size=r.hyperparameters["step_size"],
                             warnings=[str(w.message)[:80] for w in caught]))
        means = np.array([row["mean"] for row in rows])
        mcses = np.array([row["mcse"] for row in rows])
        summary = dict(
            exact=exact, mean=float(means.mean()), sd=float(means.std(ddof=1)),
            mean_mcse=float(mcses.mean()), ratio=float(means.std(ddof=1) / mcses.mean()),
            rel_error=None if exact is None else float(means.mean() / exact - 1),
            step_range=[min(r["step_size"] for r in rows), max(r["step_size"] for r in rows)],
            mean_mcse_batch_means=float(np.mean([r["mcse_batch_means"] for r in rows])),
            mean_mcse_chains=float(np.mean([r["mcse_chains"] for r in rows])),
            seconds=time.perf_counter() - start,
        )
        print(name, json.dumps(summary), flush=True)
        results[name] = dict(summary=summary, runs=rows)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(dict(options=vars(args), results=results), indent=1))


if __name__ == "__main__":
    main()
