r"""Exact finite-nβ references for the DLN suite: NUTS on sufficient statistics.

The DLN suite compares ``estimate_llc`` with Aoyagi's λ, the *asymptotic* (n → ∞) learning
coefficient. The quantity an SGMCMC run estimates is the finite-nβ expectation
``nβ (E_p[L_n] − L_n(w*))`` under the localized tempered posterior (docs/mathematics.md §0, γ = 1). The
two differ where the posterior cannot resolve the teacher's structure, e.g. a product
singular value so small that, at this nβ, the posterior treats the teacher as having a lower
rank (whose λ is smaller).

For noise-free DLN data ``y = x T`` (T the teacher's product), the mean loss is an exact
quadratic form in the network's product ``P = W_0 ⋯ W_{L−1}``:

.. math::

    L_n(W) = \frac{1}{2n}\sum_i \lVert x_i (P - T)\rVert^2
           = \tfrac12 \operatorname{tr}\big((P - T)^\top \Sigma (P - T)\big),
    \qquad \Sigma = X^\top X / n,

so NUTS on the full-batch posterior costs a few small matrix products per leapfrog step,
independent of n. This script runs :func:`slt_jax.reference.nuts_llc` in float64 on that
form (the data passed to it is one "example" holding Σ and T, so the mean over data is L_n
exactly) and writes ``benchmarks/results/dln_nuts.json``.

    python benchmarks/dln_nuts.py                 # every suite instance (+ deep ones) ≤ 2,500 params
    python benchmarks/dln_nuts.py --only 3 10     # by instance seed
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import slt_jax as slt  # noqa: E402
from slt_jax.benchmark import suite_instances  # noqa: E402
from slt_jax.data import make_dln_data, make_dln_teacher  # noqa: E402
from slt_jax.models import dln_loss  # noqa: E402
from slt_jax.reference import nuts_llc  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dln_suite import deep_instances  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def product(params):
    """``W_0 ⋯ W_{L−1}``."""
    out = params[0]
    for weight in params[1:]:
        out = out @ weight
    return out


def quadratic_form_loss(params, batch):
    """Per-"example" loss ``½ tr((P − T)ᵀ Σ (P − T))`` for a batch of (Σ, T) pairs."""
    sigma, target = batch
    difference = product(params)[None] - target
    return 0.5 * jnp.einsum("bij,bik,bkj->b", difference, sigma, difference)


def problem(widths, instance_seed, num_samples=10_000):
    """The suite's teacher and data for ``instance_seed`` (as ``slt_jax.benchmark.run_instance``)."""
    teacher = make_dln_teacher(jax.random.key(1000 + instance_seed), widths, minimal_rank=True)
    params32 = [jnp.asarray(w, jnp.float32) for w in teacher.params]
    x, y = make_dln_data(jax.random.key(2000 + instance_seed), params32, num_samples)
    x64 = np.asarray(x, np.float64)
    sigma = x64.T @ x64 / num_samples
    params = [jnp.asarray(np.asarray(w, np.float64)) for w in params32]
    target = np.asarray(product(params))
    stats = (jnp.asarray(sigma)[None], jnp.asarray(target)[None])
    return teacher, params32, (x, y), params, stats


def check_form(params32, data, params, stats, key):
    """The quadratic form equals the float32 per-example mean loss at a perturbed point."""
    keys = jax.random.split(key, len(params))
    moved = [w + 0.05 * jax.random.normal(k, w.shape, w.dtype) for w, k in zip(params, keys)]
    exact = float(quadratic_form_loss(moved, stats)[0])
    direct = float(jnp.mean(dln_loss([jnp.asarray(w, jnp.float32) for w in moved], data)))
    return exact, direct


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=int, nargs="*", help="instance seeds to run")
    parser.add_argument("--max-parameters", type=int, default=2_500)
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--target-accept", type=float, default=0.9)
    parser.add_argument("--output", default=os.path.join(RESULTS, "dln_nuts.json"))
    args = parser.parse_args(argv)

    instances = suite_instances(0) + deep_instances(first_seed=500)
    existing = {}
    if os.path.exists(args.output):
        with open(args.output) as handle:
            existing = {row["instance_seed"]: row for row in json.load(handle)["results"]}
    for widths, seed in instances:
        parameters = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
        if args.only and seed not in args.only:
            continue
        if not args.only and parameters > args.max_parameters:
            continue
        teacher, params32, data, params, stats = problem(widths, seed)
        exact, direct = check_form(params32, data, params, stats, jax.random.key(seed))
        nbeta = float(slt.default_nbeta(10_000))
        start = time.perf_counter()
        result = nuts_llc(
            quadratic_form_loss, params, stats, key=jax.random.key(4000 + seed), nbeta=nbeta,
            num_chains=args.num_chains, num_warmup=args.num_warmup,
            num_samples=args.num_samples, init_loss=0.0,
            target_accept_prob=args.target_accept,
        )
        wall = time.perf_counter() - start
        hyper = result.hyperparameters
        row = {
            "widths": widths, "instance_seed": seed, "parameters": parameters,
            "rank": teacher.rank, "true_lambda": float(teacher.true_lambda),
            "nuts_llc": float(result.mean), "nuts_mcse": float(result.mcse),
            "nuts_rhat": float(result.rhat),
            "relative_to_lambda": float(result.mean) / float(teacher.true_lambda) - 1,
            "form_check": {"quadratic_form": exact, "float32_mean_loss": direct},
            "nuts": {k: v for k, v in hyper.items() if isinstance(v, (int, float, str))},
            "wall_time_seconds": wall,
        }
        existing[seed] = row
        print(f"{str(widths):>28} d={parameters:>5} r={teacher.rank} λ={row['true_lambda']:7.2f} "
              f"NUTS {row['nuts_llc']:8.2f} ± {row['nuts_mcse']:.2f} ({100*row['relative_to_lambda']:+.1f}%) "
              f"R̂ {row['nuts_rhat']:.3f} steps {hyper.get('mean_num_steps')} "
              f"div {hyper.get('num_divergent')} form {exact:.5g}/{direct:.5g} {wall:.0f}s", flush=True)
        os.makedirs(RESULTS, exist_ok=True)
        with open(args.output, "w") as handle:
            json.dump({"protocol": "NUTS on ½tr((P−T)ᵀΣ(P−T)), float64, nβ = n/log n, γ = 1",
                       "results": sorted(existing.values(), key=lambda r: r["instance_seed"])},
                      handle, indent=1)


if __name__ == "__main__":
    main()
