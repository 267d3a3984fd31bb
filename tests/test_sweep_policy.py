"""Checkpoint sweeps as documented (issue 17, item 3).

* What :func:`slt_jax.training.train` returns (the ``TrainResult``, its ``checkpoints``,
  ``run.checkpoint(i)``, an ``nnx.State``) goes into every entry point with an adapter's
  ``loss_fn``: ``sample``, ``estimate_llc``, ``estimate_bif``, ``llc_over_checkpoints``;
  ``Frozen`` leaves (BatchNorm statistics) come from the run's ``rest`` and never move.
* ``llc_over_checkpoints`` runs ``estimate_llc``'s policy by default (calibrated SGHMC,
  nβ = n/log n, γ = 1): on the same checkpoint both agree within their error bars and with
  the exact value of a linear regression.
* ``sampler="refined_llc_paper"`` is the old default (arXiv 2410.02984's SGLD) and still gives
  its numbers.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import slt_jax as slt
from slt_jax.estimators import sweep as sweep_module
from slt_jax.models import MLP, mse_loss

N = 256
X = jax.random.normal(jax.random.key(0), (N, 2))
DATA = {"x": X, "y": jnp.sin(2 * X[:, :1]) + 0.1 * jax.random.normal(jax.random.key(1), (N, 1))}
SHORT = dict(num_chains=2, num_draws=20, num_burnin=5, batch_size=None)  # full: no noise check
MEAN = np.linspace(-0.5, 0.5, 6, dtype=np.float32)


class NormNet(nnx.Module):
    """Linear → BatchNorm → tanh → Linear: BatchNorm statistics become ``Frozen`` leaves."""

    def __init__(self, rngs):
        self.hidden = nnx.Linear(2, 6, rngs=rngs)
        # running statistics also in training (train() cannot update batch statistics)
        self.norm = nnx.BatchNorm(6, use_running_average=True, rngs=rngs)
        self.out = nnx.Linear(6, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.norm(self.hidden(x))))


def _train(model):
    return slt.training.train(model, mse_loss, DATA, optax.adam(1e-2), key=jax.random.key(2),
                              num_steps=20, batch_size=32, num_checkpoints=3)


@pytest.fixture(scope="module")
def mlp_run():
    model = MLP([2, 6, 1], activation="tanh", rngs=nnx.Rngs(0))
    return model, _train(model)


@pytest.fixture(scope="module")
def norm_run():
    model = NormNet(nnx.Rngs(0))
    model.norm.mean[...] = MEAN  # not the initial values
    return model, _train(model)


def _same_tree(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_train_output_becomes_the_adapters_params(mlp_run, norm_run):
    for model, run in (mlp_run, norm_run):
        loss_fn, params = slt.adapters.from_nnx(model, mse_loss)
        assert isinstance(run.checkpoint(1), nnx.State)
        expected = slt.adapters.from_nnx(run.model(1), mse_loss).params  # the reference
        if model is norm_run[0]:
            with pytest.raises(ValueError, match="TrainResult"):  # no BatchNorm statistics
                slt.adapters.as_params(loss_fn, run.checkpoint(1))
            converted = slt.adapters.as_params(loss_fn, run.checkpoint(1), rest=run.rest)
            assert isinstance(converted["norm"]["mean"], slt.adapters.Frozen)
        else:
            converted = slt.adapters.as_params(loss_fn, run.checkpoint(1))
            _same_tree(slt.adapters.as_params(loss_fn, nnx.to_pure_dict(run.checkpoint(1))),
                       expected)
        _same_tree(converted, expected)
        _same_tree(slt.adapters.as_params(loss_fn, run), slt.adapters.from_nnx(
            run.model(), mse_loss).params)                      # TrainResult: final parameters
        _same_tree(slt.adapters.as_params(loss_fn, model), params)   # what the adapter takes
        _same_tree(slt.adapters.as_params(loss_fn, params), params)  # already in form
    plain = lambda p, batch: mse_loss(nnx.merge(mlp_run[1].graphdef, p), batch)  # noqa: E731
    assert slt.adapters.as_params(plain, mlp_run[1].checkpoint(1)) is not None
    assert isinstance(slt.adapters.as_params(plain, mlp_run[1].checkpoint(1)), nnx.State)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # 20-draw chains: R-hat, negative LLCs
def test_every_entry_point_takes_what_train_returns(norm_run):
    """The TrainResult of a model with BatchNorm statistics (Frozen leaves, from ``run.rest``)
    into every entry point; ``nnx.State`` checkpoints of a Param-only model: the conversion
    above and ``tests/test_zoo.py``'s per-head sweep."""
    model, run = norm_run
    loss_fn, _ = slt.adapters.from_nnx(model, mse_loss)
    reference = slt.adapters.from_nnx(run.model(), mse_loss).params
    sampler = slt.samplers.sgld(1e-3, nbeta=slt.default_nbeta(N), localization=1.0)
    key = jax.random.key(3)
    with pytest.raises(ValueError, match="TrainResult"):  # the checkpoints lack the statistics
        slt.llc_over_checkpoints(loss_fn, run.checkpoints, DATA, key=key, sampler=sampler,
                                 **SHORT)
    assert float(slt.evaluate_loss(loss_fn, run, DATA)) == float(
        slt.evaluate_loss(loss_fn, reference, DATA))
    trace = slt.sample(loss_fn, run, DATA, sampler, key=key, **SHORT)
    np.testing.assert_array_equal(trace.final_params["norm"]["mean"].value,
                                  np.broadcast_to(MEAN, (2, 6)))  # Frozen: never moves
    assert not np.allclose(trace.final_params["out"]["kernel"],
                           np.asarray(run.params["out"]["kernel"][...]))
    np.testing.assert_array_equal(
        trace.loss, slt.sample(loss_fn, reference, DATA, sampler, key=key, **SHORT).loss)
    result = slt.estimate_llc(loss_fn, run, DATA, key=key, sampler=sampler, **SHORT)
    np.testing.assert_array_equal(result.draws, slt.estimate_llc(
        loss_fn, reference, DATA, key=key, sampler=sampler, **SHORT).draws)
    bif = slt.estimate_bif(loss_fn, run, DATA, jax.tree.map(lambda x: x[:4], DATA), key=key,
                           sampler=sampler, **SHORT)
    assert np.all(np.isfinite(np.asarray(bif.bif)))
    sweep = slt.llc_over_checkpoints(loss_fn, run, DATA, key=key, sampler=sampler, **SHORT)
    assert sweep.mean.shape == (3, 1) and np.all(np.isfinite(sweep.mean))


# --------------------------------------------------------------------------------------------
# One policy: the sweep's default is estimate_llc's
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regression():
    return slt.data.linear_regression_problem(jax.random.key(0), num_samples=1000, dimension=4)


def test_sweep_default_agrees_with_estimate_llc_and_the_truth(regression, monkeypatch):
    problem = regression
    checkpoints = jax.tree.map(lambda w: w[None], problem.params)
    masks = {"all": None, "w0w1": np.array([True, True, False, False])}
    run = dict(num_draws=1000)
    with slt.count_compilations() as counter:
        sweep = slt.llc_over_checkpoints(problem.loss_fn, checkpoints, problem.data,
                                         key=jax.random.key(1), masks=masks, **run)
    hyper = sweep.hyperparameters
    nbeta = slt.default_nbeta(1000)
    assert hyper["policy"] == "calibrated" and hyper["sampler"] == "sghmc"
    assert hyper["batch_size"] == 500 and hyper["num_burnin"] == 500
    np.testing.assert_allclose(hyper["nbeta"], nbeta, rtol=1e-6)
    np.testing.assert_allclose(hyper["localization"], 1.0)
    assert hyper["step_size"].shape == hyper["friction"].shape == (1, 2)
    for k in range(2):  # each cell ran with its own calibration's values
        np.testing.assert_allclose(hyper["step_size"][0, k],
                                   hyper["calibration"][0][k].step_size, rtol=1e-6)
    # the cells ran side by side in one program, each with its own step size and friction (data
    # in its sampler state): cell (0, 1) equals a sweep that gives every cell its values
    assert hyper["step_size"][0, 0] != hyper["step_size"][0, 1]
    assert hyper["num_runs"] == 1 and counter.count > 0
    fixed = slt.samplers.sghmc(step_size=hyper["step_size"][0, 1], nbeta=nbeta, localization=1.0,
                               friction=hyper["friction"][0, 1])
    with slt.count_compilations() as same_program:
        uniform = slt.llc_over_checkpoints(problem.loss_fn, checkpoints, problem.data,
                                           key=jax.random.key(1), masks=masks, sampler=fixed, **run)
    assert same_program.count == 0 and uniform.hyperparameters["policy"] == "fixed"
    np.testing.assert_allclose(sweep.results[0][1].draws, uniform.results[0][1].draws,
                               rtol=1e-5, atol=1e-5)
    estimates = [
        slt.estimate_llc(problem.loss_fn, problem.params, problem.data, key=jax.random.key(2),
                         mask=None if mask is None else mask, **run)
        for mask in masks.values()
    ]
    for k, estimate in enumerate(estimates):
        error = np.hypot(sweep.mcse[0, k], estimate.mcse)
        assert abs(sweep.mean[0, k] - estimate.mean) <= 4 * error, (k, sweep.mean, estimate)
    # the exact values (Gaussian posterior of the quadratic loss; the mask's subspace: 2 of 4)
    exact = problem.exact_llc(nbeta)
    assert abs(sweep.mean[0, 0] - exact) <= 4 * sweep.mcse[0, 0] + 0.03 * exact, sweep.mean
    assert 0.35 * exact < sweep.mean[0, 1] < 0.65 * exact
    # a second sweep (other checkpoint, key) calibrates and runs without compiling; a cell whose
    # chains failed is run again at half its step size, as estimate_llc does
    moved = jax.tree.map(lambda w: w * 1.001, checkpoints)
    failures = iter([True])
    monkeypatch.setattr(sweep_module, "_failed", lambda result: next(failures, False))
    with slt.count_compilations() as again, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # 100 draws: R-hat may warn too
        retried = slt.llc_over_checkpoints(problem.loss_fn, moved, problem.data,
                                           key=jax.random.key(5), masks=masks, num_draws=100)
    assert again.count == 0, (counter.count, again.count)
    assert any("half the step size" in str(warning.message) for warning in caught)
    hyper = retried.hyperparameters
    assert hyper["step_size_halvings"].tolist() == [[1, 0]]
    np.testing.assert_allclose(hyper["step_size"][0, 0],
                               hyper["calibration"][0][0].step_size / 2, rtol=1e-6)


#: ``llc_over_checkpoints(loss_fn, checkpoints, data, key=key(1))`` on ``regression`` with
#: the default of 2026-12-02 (arXiv 2410.02984's SGLD): cell (0, 0)
OLD_DEFAULT_MEAN = 1.63047856092453


def test_the_papers_setting_is_a_named_option_with_the_old_numbers(regression):
    problem = regression
    checkpoints = jax.tree.map(lambda w: w[None], problem.params)
    paper = slt.llc_over_checkpoints(problem.loss_fn, checkpoints, problem.data,
                                     key=jax.random.key(1), sampler="refined_llc_paper")
    np.testing.assert_allclose(paper.mean[0, 0], OLD_DEFAULT_MEAN, rtol=1e-4)
    hyper = paper.hyperparameters
    assert hyper["policy"] == "refined_llc_paper" and hyper["sampler"] == "sgld"
    assert (hyper["num_draws"], hyper["num_burnin"], hyper["batch_size"]) == (200, 100, 32)
    np.testing.assert_allclose([hyper["nbeta"][0, 0], hyper["localization"][0, 0]], [30, 200])
    explicit = slt.llc_over_checkpoints(
        problem.loss_fn, checkpoints, problem.data, key=jax.random.key(1),
        sampler=slt.estimators.refined_llc_sampler(), num_draws=200, num_burnin=100,
        batch_size=32,
    )
    np.testing.assert_array_equal(explicit.results[0][0].draws, paper.results[0][0].draws)
    with pytest.raises(TypeError, match="fixed setting"):
        slt.llc_over_checkpoints(problem.loss_fn, checkpoints, problem.data,
                                 key=jax.random.key(1), sampler="refined_llc_paper", nbeta=100.0)


def test_estimate_llc_runs_one_cell_of_a_paper_setting_sweep(regression):
    """``estimate_llc(sampler="refined_llc_paper", mask=...)`` is one cell of
    ``llc_over_checkpoints(sampler="refined_llc_paper")``: the same fixed sampler and lengths,
    and estimates that agree within their error bars (other keys)."""
    problem = regression
    checkpoints = jax.tree.map(lambda w: w[None], problem.params)
    half = np.array([True, True, False, False])
    sweep = slt.llc_over_checkpoints(problem.loss_fn, checkpoints, problem.data,
                                     key=jax.random.key(1), sampler="refined_llc_paper",
                                     masks={"all": None, "half": half})
    means = []
    for column, mask in enumerate((None, half)):
        # batch 32 at nβ = 30: the end-of-run check predicts a noise bias of ~15% and says so
        with pytest.warns(RuntimeWarning, match="minibatch gradient noise"):
            one = slt.estimate_llc(problem.loss_fn, problem.params, problem.data,
                                   key=jax.random.key(5), sampler="refined_llc_paper", mask=mask)
        hyper = one.hyperparameters
        assert hyper["sampler"] == "sgld" and hyper["calibration"] is None
        assert (hyper["num_draws"], hyper["num_burnin"], hyper["batch_size"]) == (200, 100, 32)
        np.testing.assert_allclose([hyper["nbeta"], hyper["localization"], hyper["step_size"]],
                                   [30.0, 200.0, 1e-3])
        z = (one.mean - sweep.mean[0, column]) / np.hypot(one.mcse, sweep.mcse[0, column])
        assert abs(z) < 3.5, (column, one.mean, sweep.mean[0, column], z)
        means.append(one.mean)
    # the mask reached the sampler: two of four near-isotropic directions give about half
    assert 0.3 < means[1] / means[0] < 0.7, means
    with pytest.raises(TypeError, match="fixed setting"):
        slt.estimate_llc(problem.loss_fn, problem.params, problem.data, key=jax.random.key(5),
                         sampler="refined_llc_paper", localization=10.0)
