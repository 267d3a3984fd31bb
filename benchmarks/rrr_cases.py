r"""Reduced-rank regression cases with an exact (NUTS) reference LLC.

The setup re-implements, in JAX, the reduced-rank-regression accuracy test of devinterp
(``tests/slt/rrr_test.py::test_accuracy_rrr`` at timaeus-research/devinterp a646b9d):

* model ``f(x) = B A x``, ``A: (H, M)``, ``B: (N, H)``, no biases (M in, H hidden, N out);
* data ``x ~ N(0, I_M)`` and ``y ~ N(0, I_N)`` *independent* (pure noise: the true map is 0,
  true rank r = 0), ``n = 1000`` examples;
* loss: devinterp uses ``torch.nn.functional.mse_loss`` (reduction ``"mean"`` over batch *and*
  output dimensions), so the per-example loss here is ``mean_j (f(x)_j - y_j)^2`` — the mean
  over the N output dimensions, not the sum, and without a factor ½;
* ``w*``: torch-style initialization (``U(±1/sqrt(fan_in))``), then full-batch Adam, lr 0.01,
  5000 steps (devinterp's recipe). Then, so that ``w*`` is a minimum to float32 precision, a
  polishing phase of full-batch Adam with the learning rate decayed geometrically from 1e-3 to
  1e-6 over 5000 steps. Both phases run in one ``lax.scan``;
* ``nβ = n / log n = 144.76`` (devinterp's ``default_nbeta`` of the full-batch dataloader, and
  slt_jax's ``default_nbeta(n)``), localization ``γ = 1``.

devinterp parametrizes the test over five width triples (M, H, N); Aoyagi & Watanabe's λ at
the true rank 0 is 6.5, 8, 6, 6, 6 for them. All five are here (``CASES``); the random
seeds (data and init) are ours (JAX), so ``w*`` and the reference values are not devinterp's.

    python benchmarks/rrr_cases.py                 # table: estimate_llc defaults vs stored NUTS
    python benchmarks/rrr_cases.py --compute-nuts  # (re)compute NUTS + estimate_llc, write JSON

The NUTS references are stored in ``benchmarks/results/rrr_nuts.json``; ``main(estimator)``
loads them and compares any ``estimator(loss_fn, params, data, key) -> (mean, mcse)`` with them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import slt_jax as slt
from slt_jax.reference import nuts_llc

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
JSON_PATH = os.path.join(RESULTS, "rrr_nuts.json")

NUM_EXAMPLES = 1000
DATA_SEED = 1  # devinterp seeds torch with 1; the JAX streams are of course different
INIT_SEED = 1
ADAM_LR = 0.01
ADAM_STEPS = 5000
POLISH_LR = (1e-3, 1e-6)
POLISH_STEPS = 5000
LOCALIZATION = 1.0

# (M, H, N) as parametrized in devinterp's test_accuracy_rrr, with Aoyagi's case label.
CASES = (
    (5, 3, 5),  # case 1, odd  (λ = 6.5)
    (5, 4, 5),  # case 1, even (λ = 8)
    (4, 3, 8),  # case 2: M + H < N (λ = MH/2 = 6)
    (8, 3, 4),  # case 3: N + H < M (λ = HN/2 = 6)
    (3, 8, 4),  # case 4: M + N < H (λ = MN/2 = 6)
)


def rrr_loss(params, batch):
    """Per-example loss ``mean_j (B A x - y)_j^2``, shape ``(b,)`` (devinterp's MSE)."""
    prediction = batch["x"] @ params["A"].T @ params["B"].T
    return jnp.mean((prediction - batch["y"]) ** 2, axis=-1)


def sufficient_statistics(data):
    """``{"xx": X^T X / n, "xy": X^T Y / n, "yy": mean ||y||^2}``, each with a leading axis 1.

    For the linear model ``L_n(A, B) = (1/N) [tr(W Sxx W^T) - 2 tr(W Sxy) + syy]``, ``W = BA``:
    the same full-batch loss as the mean of :func:`rrr_loss` over the n examples, at O(d^2)
    instead of O(n d) per evaluation (used for the NUTS reference only).
    """
    x = np.asarray(data["x"], np.float64)
    y = np.asarray(data["y"], np.float64)
    n = x.shape[0]
    return {
        "xx": jnp.asarray((x.T @ x / n)[None], jnp.float32),
        "xy": jnp.asarray((x.T @ y / n)[None], jnp.float32),
        "yy": jnp.asarray(np.mean(np.sum(y * y, axis=1))[None], jnp.float32),
    }


def rrr_full_loss(params, stats):
    """:math:`L_n` from :func:`sufficient_statistics`, shape ``(1,)`` (one "example")."""
    w = params["B"] @ params["A"]  # (N, M)
    xx, xy, yy = stats["xx"][0], stats["xy"][0], stats["yy"][0]
    quadratic = jnp.sum((w @ xx) * w) - 2.0 * jnp.sum(w.T * xy) + yy
    return (quadratic / w.shape[0])[None]


def _data(m: int, n_out: int, seed: int = DATA_SEED):
    key_x, key_y = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(key_x, (NUM_EXAMPLES, m), jnp.float32)
    y = jax.random.normal(key_y, (NUM_EXAMPLES, n_out), jnp.float32)
    return {"x": x, "y": y}


def _init(m: int, h: int, n_out: int, seed: int = INIT_SEED):
    """torch ``nn.Linear(bias=False)``'s default: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    key_a, key_b = jax.random.split(jax.random.key(seed))
    a = jax.random.uniform(key_a, (h, m), jnp.float32, -1.0, 1.0) / math.sqrt(m)
    b = jax.random.uniform(key_b, (n_out, h), jnp.float32, -1.0, 1.0) / math.sqrt(h)
    return {"A": a, "B": b}


def train_w_star(params, data):
    """Full-batch Adam: lr 0.01 for ADAM_STEPS, then lr decayed 1e-3 -> 1e-6 (one lax.scan)."""
    polish = optax.exponential_decay(
        POLISH_LR[0], POLISH_STEPS, POLISH_LR[1] / POLISH_LR[0]
    )
    schedule = optax.join_schedules([optax.constant_schedule(ADAM_LR), polish], [ADAM_STEPS])
    optimizer = optax.adam(schedule)

    def full_loss(p):
        return jnp.mean(rrr_loss(p, data))

    def step(carry, _):
        p, state = carry
        loss, grads = jax.value_and_grad(full_loss)(p)
        updates, state = optimizer.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), loss

    (params, _), losses = jax.jit(
        lambda p: jax.lax.scan(step, (p, optimizer.init(p)), None, ADAM_STEPS + POLISH_STEPS)
    )(params)
    gradient = jax.grad(full_loss)(params)
    grad_norm = float(optax.global_norm(gradient))
    return params, {
        "loss_after_devinterp_recipe": float(losses[ADAM_STEPS - 1]),
        "final_loss": float(full_loss(params)),
        "final_grad_norm": grad_norm,
    }


def aoyagi_lambda(m: int, h: int, n_out: int) -> float:
    return float(slt.truth.reduced_rank_regression(m, h, n_out, 0))


def rrr_case(index: int) -> dict:
    """Case ``index`` (0-4, ``CASES``): loss_fn, params (w*), data, nbeta, localization, ..."""
    m, h, n_out = CASES[index]
    data = _data(m, n_out)
    params, training = train_w_star(_init(m, h, n_out), data)
    return {
        "loss_fn": rrr_loss,
        "params": params,
        "data": data,
        "nbeta": float(slt.default_nbeta(NUM_EXAMPLES)),
        "localization": LOCALIZATION,
        "widths": (m, h, n_out),
        "aoyagi_lambda": aoyagi_lambda(m, h, n_out),
        "training": training,
        "description": (
            f"RRR M={m} H={h} N={n_out}, x~N(0,I), y~N(0,I) independent, n={NUM_EXAMPLES} "
            f"(data seed {DATA_SEED}, init seed {INIT_SEED}); per-example loss = mean over "
            f"outputs of squared error; w* = Adam lr {ADAM_LR} x {ADAM_STEPS} full-batch steps "
            f"+ {POLISH_STEPS} steps lr {POLISH_LR[0]:g}->{POLISH_LR[1]:g}; nβ = n/log n, γ = 1"
        ),
    }


# --------------------------------------------------------------------------------------------
# Reference computation (NUTS) and the default estimate_llc, stored as JSON


NUTS_SETTINGS = dict(num_chains=8, num_warmup=2000, num_samples=5000, target_accept_prob=0.9)


def _nuts_reference(case: dict, seed: int, settings: dict) -> dict:
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the exact full-batch L_n from sufficient statistics (same posterior, ~n x cheaper)
        result = nuts_llc(
            rrr_full_loss, case["params"], sufficient_statistics(case["data"]),
            key=jax.random.key(seed),
            nbeta=case["nbeta"], localization=case["localization"], **settings,
        )
    hp = result.hyperparameters
    return {
        "mean": result.mean,
        "mcse": result.mcse,
        "rel_mcse": result.mcse / result.mean,
        "std_chains": result.std,
        "per_chain": [float(v) for v in result.per_chain],
        "rhat": result.rhat,
        "ess": result.ess,
        "num_divergent": hp["num_divergent"],
        "mean_accept_prob": hp["mean_accept_prob"],
        "mean_tree_depth": hp["mean_tree_depth"],
        "max_tree_depth_hits": hp["max_tree_depth_hits"],
        "step_size": hp["step_size"],
        "settings": dict(settings, seed=seed, chain_method="vectorized", dense_mass=False,
                         loss="L_n from sufficient statistics (rrr_full_loss), float32"),
        "init_loss": result.init_loss,
        "warnings": [str(w.message) for w in caught],
        "wall_time_s": time.perf_counter() - start,
    }


def _estimate_llc_defaults(case: dict, keys=(0, 1, 2)) -> dict:
    runs = []
    for k in keys:
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = slt.estimate_llc(
                case["loss_fn"], case["params"], case["data"], key=jax.random.key(k)
            )
        runs.append({
            "key": k,
            "mean": result.mean,
            "mcse": result.mcse,
            "rhat": result.rhat,
            "step_size": float(result.hyperparameters.get("step_size", float("nan"))),
            "warnings": [str(w.message) for w in caught],
            "wall_time_s": time.perf_counter() - start,
        })
    means = np.array([r["mean"] for r in runs])
    return {
        "runs": runs,
        "mean": float(means.mean()),
        # combined error of the key-average: spread across keys (ddof=1) / sqrt(#keys)
        "sem_across_keys": float(means.std(ddof=1) / math.sqrt(len(means))),
        "mean_reported_mcse": float(np.mean([r["mcse"] for r in runs])),
    }


def compute_references(indices=None, nuts_settings=None, seed=0, with_estimate=True):
    """Run NUTS (and estimate_llc defaults) for the cases, merge into the JSON, return it."""
    settings = dict(NUTS_SETTINGS, **(nuts_settings or {}))
    stored = load_references() if os.path.exists(JSON_PATH) else {"cases": {}}
    indices = range(len(CASES)) if indices is None else indices
    for index in indices:
        case = rrr_case(index)
        m, h, n_out = case["widths"]
        print(f"case {index} {case['widths']}: grad norm {case['training']['final_grad_norm']:.2e}",
              flush=True)
        record = {
            "case": index,
            "widths": {"M": m, "H": h, "N": n_out},
            "description": case["description"],
            "aoyagi_lambda_r0": case["aoyagi_lambda"],
            "nbeta": case["nbeta"],
            "gamma": case["localization"],
            "loss_convention": "per-example mean over N outputs of (BAx - y)^2 (torch mse_loss)",
            "training": case["training"],
            "init_loss": float(slt.evaluate_loss(rrr_loss, case["params"], case["data"])),
            "nuts": _nuts_reference(case, seed, settings),
        }
        nuts = record["nuts"]
        print(f"  NUTS {nuts['mean']:.4f} ± {nuts['mcse']:.4f} (R̂ {nuts['rhat']:.4f}, "
              f"div {nuts['num_divergent']}, {nuts['wall_time_s']:.0f} s)", flush=True)
        if with_estimate:
            est = _estimate_llc_defaults(case)
            est["rel_error_vs_nuts"] = est["mean"] / nuts["mean"] - 1
            est["per_key_rel_error"] = [r["mean"] / nuts["mean"] - 1 for r in est["runs"]]
            record["estimate_llc_defaults"] = est
            print(f"  estimate_llc {[round(r['mean'], 3) for r in est['runs']]} "
                  f"rel err {est['rel_error_vs_nuts']:+.3%}", flush=True)
        stored["cases"][str(index)] = record
        stored["jax_version"] = jax.__version__
        os.makedirs(RESULTS, exist_ok=True)
        with open(JSON_PATH, "w") as f:
            json.dump(stored, f, indent=1)
    return stored


def load_references(path: str = JSON_PATH) -> dict:
    with open(path) as f:
        return json.load(f)


def default_estimator(loss_fn, params, data, key):
    """``slt.estimate_llc`` with its defaults -> ``(mean, mcse)``."""
    result = slt.estimate_llc(loss_fn, params, data, key=key)
    return result.mean, result.mcse


def main(estimator=None, keys=(0, 1, 2), indices=None, path: str = JSON_PATH):
    """Print ``estimator`` (mean over ``keys``) vs the stored NUTS reference for each case.

    ``estimator(loss_fn, params, data, key) -> (mean, mcse)``; default ``estimate_llc``.
    Returns the rows ``(case, widths, nuts, nuts_mcse, estimate, sem, rel_error)``.
    """
    estimator = default_estimator if estimator is None else estimator
    stored = load_references(path)["cases"]
    indices = sorted(int(i) for i in stored) if indices is None else indices
    print(f"{'case':>4} {'M,H,N':>8} {'λ(r=0)':>7} {'NUTS':>14} {'estimate':>14} {'rel err':>8}")
    rows = []
    for index in indices:
        ref = stored[str(index)]
        case = rrr_case(index)
        values = [estimator(case["loss_fn"], case["params"], case["data"], jax.random.key(k))[0]
                  for k in keys]
        mean = float(np.mean(values))
        sem = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
        nuts, nuts_mcse = ref["nuts"]["mean"], ref["nuts"]["mcse"]
        rel = mean / nuts - 1
        widths = ",".join(str(v) for v in case["widths"])
        print(f"{index:>4} {widths:>8} {case['aoyagi_lambda']:>7.2f} "
              f"{nuts:>7.3f} ± {nuts_mcse:.3f} {mean:>7.3f} ± {sem:.3f} {rel:>+8.2%}", flush=True)
        rows.append((index, case["widths"], nuts, nuts_mcse, mean, sem, rel))
    worst = max(abs(r[-1]) for r in rows)
    print(f"max |relative error| {worst:.2%} (target ≤ 2%)")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compute-nuts", action="store_true",
                        help="recompute the NUTS references and estimate_llc defaults")
    parser.add_argument("--cases", type=int, nargs="*", default=None)
    parser.add_argument("--keys", type=int, nargs="*", default=[0, 1, 2, 3])
    parser.add_argument("--output", default=None,
                        help="write the comparison rows as JSON (e.g. results/rrr_defaults.json)")
    args = parser.parse_args()
    if args.compute_nuts:
        compute_references(args.cases)
    else:
        rows = main(indices=args.cases, keys=tuple(args.keys))
        if args.output:
            with open(args.output, "w") as handle:
                json.dump({"estimator": "estimate_llc defaults", "keys": args.keys,
                           "jax_version": jax.__version__,
                           "rows": [dict(zip(("case", "widths", "nuts", "nuts_mcse", "estimate",
                                              "sem_over_keys", "relative_error"), row))
                                    for row in rows]}, handle, indent=1)
        sys.exit(0)
