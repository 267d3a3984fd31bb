"""slt_jax.to_arviz: the export keeps shapes and values, ArviZ's diagnostics agree with ours,
divergences land on the right draws, and bad input gets a clear error."""

from __future__ import annotations

import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as slt
from slt_jax.export import diverging_draws
from slt_jax.sampling import Trace

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.2x announces its 1.0 refactor
    arviz = pytest.importorskip("arviz")

NUM_CHAINS, NUM_DRAWS, NUM_PROBES = 4, 200, 5
NBETA, STEP_SIZE = 10.0, 0.05


def _quadratic_loss(w, batch):
    """Per-example loss of a 2-parameter linear model with target 0: minimum at w* = 0."""
    return 0.5 * (batch @ w) ** 2


@pytest.fixture(scope="module")
def run():
    """One small SGLD run (4 chains x 200 draws) with observables and a query set."""
    data = jax.random.normal(jax.random.key(0), (64, 2))
    sampler = slt.samplers.sgld(step_size=STEP_SIZE, nbeta=NBETA, localization=1.0)
    trace = slt.sample(
        _quadratic_loss, jnp.zeros(2), data, sampler, key=jax.random.key(1),
        num_chains=NUM_CHAINS, num_draws=NUM_DRAWS, num_burnin=20, batch_size=32,
        observables={"norm": lambda w: jnp.sum(w**2), "weights": lambda w: w},
        query_data={"probe": data[:NUM_PROBES]},
    )
    init_loss = float(slt.evaluate_loss(_quadratic_loss, jnp.zeros(2), data))
    return trace, slt.llc(trace, nbeta=NBETA, init_loss=init_loss)


def _value(diagnostic, name: str) -> float:
    """A scalar out of ``arviz.ess`` / ``arviz.rhat`` (a Dataset in 0.x, a DataTree in 1.x)."""
    if name in getattr(diagnostic, "data_vars", {}):
        return float(diagnostic[name])
    return float(diagnostic["posterior"][name])


def test_trace_round_trip_keeps_shapes_and_values(run):
    trace, _ = run
    exported = slt.to_arviz(trace)
    posterior = exported.posterior
    np.testing.assert_array_equal(posterior["loss"].values, np.asarray(trace.loss))
    assert posterior["loss"].dims == ("chain", "draw")
    np.testing.assert_array_equal(posterior["norm"].values, np.asarray(trace.observables["norm"]))
    assert posterior["weights"].shape == (NUM_CHAINS, NUM_DRAWS, 2)
    probe = posterior["query_loss_probe"]
    assert probe.dims == ("chain", "draw", "probe_example")
    np.testing.assert_array_equal(probe.values, np.asarray(trace.query_losses["probe"]))
    stats = exported.sample_stats
    assert stats["diverging"].shape == (NUM_CHAINS, NUM_DRAWS)
    assert not stats["diverging"].values.any()
    np.testing.assert_allclose(stats["step_size"].values, STEP_SIZE, rtol=1e-6)
    assert posterior.attrs["nbeta"] == pytest.approx(NBETA)


def test_arviz_diagnostics_agree_with_ours(run):
    trace, result = run
    exported = slt.to_arviz(trace, llc_result=result)
    np.testing.assert_array_equal(exported.posterior["llc"].values, result.draws)
    # ArviZ's rank-normalized split-R-hat vs numpyro's split-R-hat (slt_jax.diagnostics)
    rhat = _value(arviz.rhat(exported, var_names=["llc"]), "llc")
    assert abs(rhat - result.rhat) < 0.02, (rhat, result.rhat)
    # the plain (non-rank-normalized) ESS is the same estimator as numpyro's
    ess = _value(arviz.ess(exported, var_names=["llc"], method="mean"), "llc")
    assert ess == pytest.approx(result.ess, rel=0.1)
    bulk = _value(arviz.ess(exported, var_names=["llc"]), "llc")
    assert 0.5 * result.ess < bulk < 2.0 * result.ess


def test_llc_result_exports_its_draws_and_divergences():
    losses = np.random.default_rng(0).normal(1.5, 0.1, size=(3, 40))
    losses[1, 25:] = np.nan
    with pytest.warns(RuntimeWarning, match="diverged"):
        result = slt.llc(losses, nbeta=10.0, init_loss=1.0)
    calibration = slt.calibration.Calibration(
        step_size=0.01, sampler="sgld", max_hessian_eigenvalue=1.0, max_curvature=10.0,
        stability_bound=0.4, safety_factor=0.1, nbeta=10.0, localization=1.0,
    )
    result = result._replace(hyperparameters={  # as estimate_llc records them
        "sampler": "sgld", "step_size": jnp.float32(0.01), "num_draws": 40,
        "calibration": calibration,
    })
    exported = slt.to_arviz(result)
    np.testing.assert_array_equal(exported.posterior["llc"].values, result.draws)
    diverging = exported.sample_stats["diverging"].values
    assert diverging.sum() == 15 and diverging[1, 25:].all()
    attributes = exported.posterior.attrs
    assert attributes["sampler"] == "sgld" and attributes["num_draws"] == 40
    assert attributes["step_size"] == pytest.approx(0.01) and "calibration" not in attributes
    np.testing.assert_allclose(exported.sample_stats["step_size"].values, 0.01)


def test_divergence_placed_on_draws_by_first_nonfinite_step():
    loss = np.ones((3, 10))
    loss[1, 4:] = np.nan
    trace = Trace(loss=loss, observables={}, diverged=np.array([False, True, True]),
                  first_nonfinite_step=np.array([-1, 26, 3]),
                  query_losses={"tokens": np.zeros((3, 10, 4, 6))})
    # burn-in 20, 2 steps per draw: draw d covers steps 20 + 2d and 21 + 2d
    exported = slt.to_arviz(trace, num_burnin=20, steps_per_draw=2)
    diverging = exported.sample_stats["diverging"].values
    assert not diverging[0].any()
    np.testing.assert_array_equal(diverging[1], np.arange(10) >= 3)
    assert diverging[2].all()  # diverged during burn-in
    assert exported.posterior["query_loss_tokens"].dims == (
        "chain", "draw", "tokens_example", "tokens_token"
    )
    # without run lengths: from the first non-finite draw; a diverged chain whose recorded
    # values are all finite diverged after its last recorded loss, so at its last draw
    guessed = diverging_draws(10, diverged=trace.diverged, finite=np.isfinite(loss))
    np.testing.assert_array_equal(guessed[1], np.arange(10) >= 4)
    np.testing.assert_array_equal(guessed[2], np.arange(10) == 9)


def test_bad_input_raises_clear_errors(run):
    trace, result = run
    with pytest.raises(TypeError, match="Trace"):
        slt.to_arviz(np.zeros((2, 10)))
    with pytest.raises(TypeError, match="llc_result"):
        slt.to_arviz(trace, llc_result=np.zeros((2, 10)))
    clash = trace._replace(observables={"loss": trace.loss})
    with pytest.raises(ValueError, match="'loss'"):
        slt.to_arviz(clash)
    with pytest.raises(ValueError, match="different runs"):
        slt.to_arviz(trace, llc_result=result._replace(draws=result.draws[:, :10]))


def test_missing_arviz_says_how_to_install(run, monkeypatch):
    trace, _ = run
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match=r"slt_jax\[arviz\]"):
        slt.to_arviz(trace)
