"""Model zoo, synthetic data, the trainer and LLC sweeps over checkpoints (issue 11)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import slt_jax as slt
from slt_jax.data import (
    dmmse_predictions,
    make_icl_data,
    make_icl_tasks,
    make_induction_data,
    make_tms_data,
    ridge_predictions,
)
from slt_jax.models import (
    MLP,
    AttentionOnlyTransformer,
    InContextRegressionTransformer,
    ToyModelOfSuperposition,
    icl_loss,
    mse_loss,
    next_token_loss,
    tms_loss,
)
from slt_jax.training import log_spaced_steps, train


@nnx.jit
def _apply(model, *args):
    """``model(*args)`` compiled as one program (eager NNX calls compile op by op)."""
    return model(*args)


@nnx.jit(static_argnums=0)
def _loss(loss, model, batch):
    return loss(model, batch)


def _paths(params):
    return {
        jax.tree_util.keystr(path, simple=True, separator="/").removesuffix("/value"): leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def test_attention_only_transformer_has_per_head_leaves_by_name():
    model = AttentionOnlyTransformer(16, 12, d_model=24, num_layers=2, num_heads=3, d_head=5,
                                     rngs=nnx.Rngs(0))
    paths = _paths(nnx.state(model, nnx.Param))
    for layer in range(2):
        for name in ("query", "key", "value"):
            assert paths[f"blocks/{layer}/attn/{name}"] == (3, 24, 5)
        assert paths[f"blocks/{layer}/attn/output"] == (3, 5, 24)
    assert paths["embedding"] == (16, 24) and paths["unembedding"] == (24, 16)
    tokens = jnp.zeros((2, 12), jnp.int32)
    assert nnx.eval_shape(lambda: model(tokens)).shape == (2, 12, 16)
    assert nnx.eval_shape(lambda: next_token_loss(model, {"tokens": tokens})).shape == (2, 11)
    patterns = nnx.eval_shape(lambda: model.attention_patterns(tokens))
    assert [p.shape for p in patterns] == [(2, 3, 12, 12)] * 2


def test_zeroing_one_head_changes_only_through_that_head():
    """Head h is exactly the slices [h] of its layer's leaves: zeroing the output slice of a head
    equals removing that head's contribution computed by hand."""
    model = AttentionOnlyTransformer(rngs=nnx.Rngs(1))
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 16)

    @nnx.jit
    def check(model):
        x = model.residual(tokens)
        attention = model.blocks[0].attn
        value = jnp.einsum("btd,hdk->bhtk", x, attention.value[...])
        mixed = jnp.einsum("bhts,bhsk->bhtk", attention.pattern(x), value)
        per_head = jnp.einsum("bhtk,hkd->bhtd", mixed, attention.output[...])
        attention.output[...] = attention.output[...].at[2].set(0.0)
        return attention(x), per_head.sum(1) - per_head[:, 2]

    actual, expected = check(model)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_other_models_shapes():
    mlp = MLP([3, 8, 2], rngs=nnx.Rngs(0))
    batch = {"x": jnp.ones((5, 3)), "y": jnp.zeros((5, 2))}
    assert _loss(mse_loss, mlp, batch).shape == (5,)
    tms = ToyModelOfSuperposition(6, 2, rngs=nnx.Rngs(0))
    assert _paths(nnx.state(tms, nnx.Param)) == {"W": (2, 6), "b": (6,)}
    x = jnp.array([[1.0, 0, 0, 0, 0, 0], [0, 0, 0.5, 0, 0, 0]])
    w, b = np.asarray(tms.W[...]), np.asarray(tms.b[...])
    expected = np.maximum(np.asarray(x) @ w.T @ w + b, 0.0)  # ReLU(W^T W x + b)
    np.testing.assert_allclose(_apply(tms, x), expected, rtol=1e-5, atol=1e-6)
    importance = 0.9 ** np.arange(6)
    np.testing.assert_allclose(_loss(tms_loss, tms, {"x": x}),
                               ((np.asarray(x) - expected) ** 2 * importance).sum(1), rtol=1e-5)
    icl = InContextRegressionTransformer(rngs=nnx.Rngs(0))
    data = make_icl_data(jax.random.key(0), 3)
    assert nnx.eval_shape(lambda: icl_loss(icl, data)).shape == (3, 16)
    assert _paths(nnx.state(icl, nnx.Param))["blocks/1/attn/query"] == (2, 32, 16)


def test_icl_prediction_at_k_does_not_see_y_k():
    """Causality: the prediction of y_k depends on x_1..x_k and y_1..y_{k-1} only."""
    icl = InContextRegressionTransformer(rngs=nnx.Rngs(0))
    data = make_icl_data(jax.random.key(1), 3)  # the size above: the same program
    changed = data["y"].at[:, 5].add(10.0)
    before, after = _apply(icl, data["x"], data["y"]), _apply(icl, data["x"], changed)
    np.testing.assert_array_equal(before[:, :6], after[:, :6])
    assert not np.allclose(before[:, 6:], after[:, 6:])


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------


def test_tms_feature_sparsity_and_values():
    n, features, p = 20_000, 5, 0.1
    x = np.asarray(make_tms_data(jax.random.key(0), n, features, p)["x"])
    present = x > 0
    standard_error = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(present.mean(0) - p) < 4 * standard_error)
    values = x[present]  # U[0, 1]: mean 1/2, sd 1/sqrt(12)
    assert abs(values.mean() - 0.5) < 4 / np.sqrt(12 * values.size)
    # features independent: P(two present) = p^2
    both = (present[:, 0] & present[:, 1]).mean()
    assert abs(both - p**2) < 4 * np.sqrt(p**2 * (1 - p**2) / n)


def test_induction_sequences_repeat_a_subsequence():
    tokens = np.asarray(make_induction_data(jax.random.key(0), 500, 16, 8)["tokens"])
    np.testing.assert_array_equal(tokens[:, :8], tokens[:, 8:])  # default: (s, s)
    data = make_induction_data(jax.random.key(1), 500, 20, 50, repeat_length=4)
    tokens, starts = np.asarray(data["tokens"]), np.asarray(data["repeat_start"])
    for row, start in zip(tokens, starts):
        copy = row[start:start + 4]
        earlier = [tuple(row[a:a + 4]) for a in range(0, start - 3)]
        assert tuple(copy) in earlier
    # tokens are uniform over the vocabulary (chi-square within 4 sd of its mean)
    counts = np.bincount(tokens.reshape(-1), minlength=50)
    expected = tokens.size / 50
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert abs(chi2 - 49) < 4 * np.sqrt(2 * 49) + 49  # repeats add correlation, not bias
    with pytest.raises(ValueError, match="repeat_length"):
        make_induction_data(jax.random.key(0), 2, 10, 5, repeat_length=6)


def test_icl_data_noise_and_tasks():
    tasks = make_icl_tasks(jax.random.key(0), 8)
    data = make_icl_data(jax.random.key(1), 4000, tasks)
    residual = np.asarray(data["y"] - jnp.einsum("nkd,nd->nk", data["x"], data["task"]))
    variance, count = residual.var(), residual.size
    assert abs(variance - 0.125) < 4 * 0.125 * np.sqrt(2 / count)
    drawn = {tuple(np.round(t, 5)) for t in np.asarray(data["task"])}
    assert drawn == {tuple(np.round(t, 5)) for t in np.asarray(tasks)}


def test_ridge_baseline_equals_closed_form_posterior_mean():
    data = make_icl_data(jax.random.key(2), 3, num_context=6)
    x, y = np.asarray(data["x"], np.float64), np.asarray(data["y"], np.float64)
    predictions = np.asarray(ridge_predictions(data["x"], data["y"], noise_variance=0.125))
    for b in range(3):
        for k in range(6):
            # posterior of t ~ N(0, I) given y_j = t.x_j + N(0, σ²), j < k
            precision = np.eye(4) + x[b, :k].T @ x[b, :k] / 0.125
            mean = np.linalg.solve(precision, x[b, :k].T @ y[b, :k] / 0.125)
            np.testing.assert_allclose(predictions[b, k], mean @ x[b, k], rtol=2e-4, atol=2e-5)


def test_dmmse_is_the_discrete_posterior_mean():
    tasks = make_icl_tasks(jax.random.key(3), 5)
    data = make_icl_data(jax.random.key(4), 2, tasks, num_context=5)
    t, x, y = (np.asarray(a, np.float64) for a in (tasks, data["x"], data["y"]))
    predictions = np.asarray(dmmse_predictions(tasks, data["x"], data["y"]))
    for b in range(2):
        for k in range(5):
            log_weight = -np.sum((y[b, :k, None] - x[b, :k] @ t.T) ** 2, axis=0) / (2 * 0.125)
            weight = np.exp(log_weight - log_weight.max())
            weight /= weight.sum()
            np.testing.assert_allclose(predictions[b, k], weight @ (t @ x[b, k]), rtol=2e-4,
                                       atol=2e-5)
    # with long contexts the dMMSE identifies the task: its error tends to the noise level
    many = make_icl_data(jax.random.key(5), 2000, tasks)
    late = np.asarray(dmmse_predictions(tasks, many["x"], many["y"]) - many["y"])[:, -4:]
    assert abs(np.mean(late**2) - 0.125) < 4 * 0.125 * np.sqrt(2 / late.size)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def test_log_spaced_steps():
    assert log_spaced_steps(1000, 5).tolist() == [0, 1, 10, 100, 1000]
    steps = log_spaced_steps(10, 8)
    assert len(set(steps.tolist())) == 8 and steps[0] == 0 and steps[-1] == 10
    assert np.all(np.diff(steps) > 0)
    with pytest.raises(ValueError, match="distinct"):
        log_spaced_steps(3, 6)


def test_train_plain_pytree_reduces_loss_and_saves_log_spaced_checkpoints():
    x = jax.random.normal(jax.random.key(0), (256, 3))
    data = {"x": x, "y": x @ jnp.array([1.0, -2.0, 0.5])}
    loss = lambda w, batch: 0.5 * jnp.square(batch["x"] @ w["w"] - batch["y"])  # noqa: E731
    initial = {"w": jnp.zeros(3)}
    result = train(initial, loss, data, optax.sgd(0.1), key=jax.random.key(1), num_steps=300,
                   batch_size=16, num_checkpoints=6)
    assert result.steps.tolist() == log_spaced_steps(300, 6).tolist()
    assert result.checkpoints["w"].shape == (6, 3) and result.losses.shape == (300,)
    np.testing.assert_array_equal(result.checkpoint(0)["w"], initial["w"])
    np.testing.assert_array_equal(result.checkpoint(-1)["w"], result.params["w"])
    full = [float(jnp.mean(jax.jit(loss)(result.checkpoint(i), data))) for i in range(6)]
    assert full[-1] < 1e-3 * full[0] and all(np.diff(full) < 0)
    np.testing.assert_allclose(result.params["w"], [1.0, -2.0, 0.5], atol=1e-2)


def test_train_nnx_model_compiles_once_and_returns_models():
    model = MLP([2, 16, 1], activation="tanh", rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (512, 2), minval=-1, maxval=1)
    data = {"x": x, "y": jnp.sin(3 * x[:, :1]) * x[:, 1:]}
    kwargs = dict(num_steps=400, batch_size=32, num_checkpoints=5)
    result = train(model, mse_loss, data, optax.adam(1e-2), key=jax.random.key(1), **kwargs)
    with slt.count_compilations() as counter:
        again = train(model, mse_loss, data, optax.adam(1e-2), key=jax.random.key(2), **kwargs)
    assert counter.count == 0  # a new key reuses the program
    assert not np.allclose(again.losses, result.losses)
    first, last = (float(jnp.mean(_loss(mse_loss, result.model(i), data))) for i in (0, -1))
    assert last < 0.2 * first
    assert isinstance(result.model(), MLP)
    assert result.checkpoints["layers"][0]["kernel"].shape == (5, 2, 16)


# --------------------------------------------------------------------------------------------
# LLC over checkpoints
# --------------------------------------------------------------------------------------------


def _linear_problem():
    x = jax.random.normal(jax.random.key(0), (512, 4))
    data = {"x": x, "y": x @ jnp.array([1.0, 0.0, -1.0, 2.0])}

    def loss_fn(w, batch):
        return 0.5 * jnp.square(batch["x"] @ w["a"] + batch["x"][:, :1] @ w["b"] - batch["y"])

    return loss_fn, data


@pytest.mark.filterwarnings("ignore:.*(R-hat|negative LLC).*:RuntimeWarning")  # short chains
def test_sweep_compiles_once_and_matches_separate_sample_calls():
    loss_fn, data = _linear_problem()
    checkpoints = {"a": jnp.array([[1.0, 0, -1, 2], [0.9, 0.1, -1, 2], [1.1, 0, -0.9, 2]]),
                   "b": jnp.zeros((3, 1))}
    masks = {"a": {"a": np.array([True, True, False, False]), "b": np.array(False)},
             "all": None}
    sampler = slt.samplers.sgld(1e-4, nbeta=100.0, localization=10.0)
    run = dict(key=jax.random.key(1), sampler=sampler, num_chains=2, num_draws=50, num_burnin=10,
               batch_size=32)
    first = slt.llc_over_checkpoints(loss_fn, checkpoints, data, masks=masks, **run)
    new_masks = {"a": {"a": np.array([False, True, True, False]), "b": np.array(True)}, "all": None}
    moved = jax.tree.map(lambda c: c + 0.01, checkpoints)
    with slt.count_compilations() as counter:
        second = slt.llc_over_checkpoints(loss_fn, moved, data, masks=new_masks,
                                          **{**run, "key": jax.random.key(2)})
    assert counter.count == 0
    assert first.mean.shape == (3, 2) and np.all(np.isfinite(first.mcse))
    assert np.all(np.isfinite(second.rhat)) and second.labels == ("a", "all")
    # one cell equals a plain `sample` run with that cell's keys, checkpoint and mask
    keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(run["key"], i), 2))(
        jnp.array([2 * 1 + 0])
    ).reshape(-1)
    trace = slt.sample(
        loss_fn, jax.tree.map(lambda c: c[1], checkpoints), data,
        slt.samplers.sgld(1e-4, nbeta=100.0, localization=10.0, mask=masks["a"]), key=keys,
        num_chains=2, num_draws=50, num_burnin=10, batch_size=32,
    )
    np.testing.assert_allclose(first.results[1][0].draws, slt.llc(trace, nbeta=100.0,
                               init_loss=first.init_loss[1]).draws, rtol=1e-5, atol=1e-5)
    assert first.hyperparameters["paired_runs"] == 3  # one checkpoint per run: paired estimator
    # stacking every cell into one run (checkpoints vmapped) gives the same draws
    stacked = slt.llc_over_checkpoints(loss_fn, checkpoints, data, masks=masks, cells_per_run=6,
                                       **run)
    assert stacked.hyperparameters["num_runs"] == 1
    assert stacked.hyperparameters["paired_runs"] == 0  # checkpoints mixed: plain estimator
    plain = slt.llc(trace, nbeta=100.0, init_loss=first.init_loss[1], paired=False)
    np.testing.assert_allclose(stacked.results[1][0].draws, plain.draws, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def trained_transformer():
    model = AttentionOnlyTransformer(16, 16, d_model=16, num_heads=2, d_head=8, rngs=nnx.Rngs(0))
    data = {"tokens": make_induction_data(jax.random.key(1), 1024, 16, 16)["tokens"]}
    result = train(model, next_token_loss, data, optax.adam(1e-2), key=jax.random.key(2),
                   num_steps=300, batch_size=32, num_checkpoints=3)
    return model, data, result


def test_per_head_llcs_are_finite_converged_and_differ(trained_transformer):
    model, data, result = trained_transformer
    assert result.losses[-20:].mean() < 0.7 * result.losses[:5].mean()
    loss_fn, params = slt.adapters.from_nnx(model, next_token_loss)
    checkpoints = result.checkpoints  # an nnx.State: the sweep takes it as the adapter's params
    masks = {
        f"L{layer}H{head}": slt.masks.head(params, f"blocks/{layer}/attn/*", head=head, axis=0)
        for layer in range(2) for head in range(2)
    }
    final = jax.tree.map(lambda c: c[-1:], checkpoints)
    sweep = slt.llc_over_checkpoints(loss_fn, final, data, key=jax.random.key(3), masks=masks,
                                     sampler="refined_llc_paper", num_chains=4, num_draws=200,
                                     num_burnin=100)
    mean, mcse, rhat = sweep.mean[0], sweep.mcse[0], sweep.rhat[0]
    assert np.all(np.isfinite(mean)) and np.all(mean > 0)
    assert np.all(rhat < 1.05), rhat
    spread = (mean.max() - mean.min()) / np.sqrt(mcse[mean.argmax()] ** 2 + mcse[mean.argmin()] ** 2)
    assert spread > 4, (mean, mcse)
