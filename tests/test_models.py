"""Tests for slt_jax.models (DLN, MLP) and slt_jax.data (DLN teacher protocol, docs/mathematics.md §7)."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slt_jax.data import DLNTeacher, dln_problem, make_dln_data, make_dln_teacher, random_dln_widths
from slt_jax.models import (
    count_parameters,
    dln_apply,
    dln_init,
    dln_loss,
    dln_product,
    mlp_apply,
    mlp_classification_loss,
    mlp_init,
    mlp_loss,
)

WIDTHS = (6, 5, 7, 4, 6)  # 4 layers, every min(H_i, H_{i+1}) >= 2 so every layer can be deficient


def _numpy_product(params):
    product = np.asarray(params[0], dtype=np.float64)
    for weight in params[1:]:
        product = product @ np.asarray(weight, dtype=np.float64)
    return product


# ----------------------------------------------------------------------------------------- DLN


def test_dln_init_shapes_and_xavier_scale():
    params = dln_init(jax.random.key(0), WIDTHS)
    assert isinstance(params, list)
    assert [p.shape for p in params] == [(a, b) for a, b in zip(WIDTHS[:-1], WIDTHS[1:])]
    assert count_parameters(params) == sum(a * b for a, b in zip(WIDTHS[:-1], WIDTHS[1:]))
    # Pool 200 draws (same shapes, so no recompilation): >= 4000 normals per layer, relative
    # standard error of the sample std ~ 1/sqrt(2N) < 1.2%; allow 6%.
    draws = [dln_init(jax.random.key(seed), WIDTHS) for seed in range(200)]
    for index, (fan_in, fan_out) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:])):
        pooled = np.stack([np.asarray(d[index]) for d in draws])
        assert abs(pooled.std() / np.sqrt(2.0 / (fan_in + fan_out)) - 1.0) < 0.06
    scaled = np.stack([np.asarray(dln_init(jax.random.key(s), WIDTHS, scale=0.1)[0]) for s in range(200)])
    assert abs(scaled.std() / 0.1 - 1.0) < 0.06


def test_dln_apply_shapes_and_product_matches_sequential_apply():
    params = dln_init(jax.random.key(1), WIDTHS)
    x = jax.random.normal(jax.random.key(2), (8, WIDTHS[0]))
    out = dln_apply(params, x)
    assert out.shape == (8, WIDTHS[-1])
    assert dln_apply(params, x[0]).shape == (WIDTHS[-1],)
    assert dln_apply(params, x.reshape(2, 4, WIDTHS[0])).shape == (2, 4, WIDTHS[-1])
    product = dln_product(params)
    assert product.shape == (WIDTHS[0], WIDTHS[-1])
    np.testing.assert_allclose(x @ product, out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(product, _numpy_product(params), rtol=1e-5, atol=1e-6)


def test_dln_loss_shape_and_value():
    params = dln_init(jax.random.key(3), WIDTHS)
    x = jax.random.normal(jax.random.key(4), (8, WIDTHS[0]))
    y = jax.random.normal(jax.random.key(5), (8, WIDTHS[-1]))
    losses = dln_loss(params, (x, y))
    assert losses.shape == (8,)
    expected = 0.5 * np.sum((np.asarray(x) @ _numpy_product(params) - np.asarray(y)) ** 2, axis=-1)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(dln_loss)(params, (x, y)), losses, rtol=1e-6)


@pytest.mark.parametrize("widths", [[3], [], [3, 0], [3, -1, 2], [3, 2.5], [True, 2], "32", 5])
def test_invalid_widths_raise(widths):
    with pytest.raises(ValueError, match="widths"):
        dln_init(jax.random.key(0), widths)
    with pytest.raises(ValueError, match="widths"):
        mlp_init(jax.random.key(0), widths)


def test_invalid_shapes_raise():
    params = dln_init(jax.random.key(0), WIDTHS)
    with pytest.raises(ValueError, match="x must have shape"):
        dln_apply(params, jnp.ones((5, WIDTHS[0] + 1)))
    with pytest.raises(ValueError, match="y must have shape"):
        dln_loss(params, (jnp.ones((5, WIDTHS[0])), jnp.ones((5, WIDTHS[-1] + 1))))
    with pytest.raises(ValueError, match="output width"):
        dln_apply([params[0], params[0]], jnp.ones((5, WIDTHS[0])))
    with pytest.raises(ValueError, match="non-empty"):
        dln_product([])


# ------------------------------------------------------------------------------ DLN teachers


def test_teacher_rank_is_numpy_rank_of_product():
    for seed in range(10):
        teacher = make_dln_teacher(jax.random.key(seed), WIDTHS)
        assert isinstance(teacher, DLNTeacher)
        assert teacher.widths == WIDTHS
        assert [p.shape for p in teacher.params] == [(a, b) for a, b in zip(WIDTHS[:-1], WIDTHS[1:])]
        assert teacher.rank == np.linalg.matrix_rank(_numpy_product(teacher.params))
        layer_ranks = [np.linalg.matrix_rank(np.asarray(p, dtype=np.float64)) for p in teacher.params]
        assert 1 <= teacher.rank <= min(min(WIDTHS), *layer_ranks)


def test_teacher_rank_deficiency_fraction():
    """Each layer is deficient with probability 1/2. Over 50 seeds x 4 layers = 200 Bernoulli(1/2)
    draws, the fraction lies in [0.3, 0.7] except with probability <= 2 exp(-2 * 200 * 0.2^2)
    ~ 2e-7 (Hoeffding); the std of the fraction is 0.035, so the bound is ~5.7 sigma."""
    deficient = []
    for seed in range(50):
        teacher = make_dln_teacher(jax.random.key(1000 + seed), WIDTHS)
        for weight in teacher.params:
            layer_rank = np.linalg.matrix_rank(np.asarray(weight, dtype=np.float64))
            full_rank = min(weight.shape)
            assert 1 <= layer_rank <= full_rank
            deficient.append(layer_rank < full_rank)
            if layer_rank < full_rank:  # trailing rows are the zeroed ones
                assert np.all(np.asarray(weight)[layer_rank:] == 0.0)
    fraction = np.mean(deficient)
    assert 0.3 <= fraction <= 0.7, fraction


def test_teacher_rank_deficiency_probability_extremes():
    full = make_dln_teacher(jax.random.key(7), WIDTHS, rank_deficiency_probability=0.0)
    assert full.rank == min(WIDTHS)
    reduced = make_dln_teacher(jax.random.key(7), WIDTHS, rank_deficiency_probability=1.0)
    for weight in reduced.params:
        assert np.linalg.matrix_rank(np.asarray(weight, dtype=np.float64)) < min(weight.shape)
    with pytest.raises(ValueError, match="rank_deficiency_probability"):
        make_dln_teacher(jax.random.key(7), WIDTHS, rank_deficiency_probability=1.5)


def test_teacher_true_lambda():
    teacher = make_dln_teacher(jax.random.key(11), WIDTHS)
    try:
        from slt_jax.truth import deep_linear_network
    except ImportError:
        assert teacher.true_lambda is None
        return
    assert isinstance(teacher.true_lambda, Fraction)
    assert teacher.true_lambda == deep_linear_network(WIDTHS, teacher.rank)


def test_teacher_is_deterministic_in_key():
    first = make_dln_teacher(jax.random.key(3), WIDTHS)
    second = make_dln_teacher(jax.random.key(3), WIDTHS)
    for a, b in zip(first.params, second.params):
        np.testing.assert_array_equal(a, b)
    assert first.rank == second.rank


# -------------------------------------------------------------------------------------- data


def test_dln_data_is_exact_teacher_output_and_loss_is_zero():
    teacher = make_dln_teacher(jax.random.key(5), WIDTHS)
    x, y = make_dln_data(jax.random.key(6), teacher.params, 1000, input_range=10.0)
    assert x.shape == (1000, WIDTHS[0]) and y.shape == (1000, WIDTHS[-1])
    assert float(jnp.max(jnp.abs(x))) <= 10.0
    assert float(jnp.max(jnp.abs(x))) > 9.0  # really spans the cube
    np.testing.assert_array_equal(y, dln_apply(teacher.params, x))
    losses = dln_loss(teacher.params, (x, y))
    assert losses.shape == (1000,)
    np.testing.assert_array_equal(losses, np.zeros(1000))
    # Also accepts the teacher itself and validates its arguments.
    x2, _ = make_dln_data(jax.random.key(6), teacher, 1000)
    np.testing.assert_array_equal(x, x2)
    with pytest.raises(ValueError, match="num_samples"):
        make_dln_data(jax.random.key(6), teacher, 0)
    with pytest.raises(ValueError, match="input_range"):
        make_dln_data(jax.random.key(6), teacher, 10, input_range=-1.0)


def test_dln_problem():
    teacher, (x, y), loss_fn = dln_problem(jax.random.key(9), WIDTHS, num_samples=1000, input_range=2.0)
    assert loss_fn is dln_loss
    assert teacher.widths == WIDTHS
    assert x.shape == (1000, WIDTHS[0]) and y.shape == (1000, WIDTHS[-1])
    assert float(jnp.max(jnp.abs(x))) <= 2.0
    np.testing.assert_array_equal(loss_fn(teacher.params, (x, y)), np.zeros(1000))


def test_random_dln_widths():
    widths = random_dln_widths(jax.random.key(0))
    assert widths == random_dln_widths(jax.random.key(0))
    draws = [random_dln_widths(jax.random.key(seed), (2, 4), (3, 9)) for seed in range(30)]
    assert len(set(draws)) > 20
    for widths in draws:
        assert 3 <= len(widths) <= 5
        assert all(isinstance(w, int) and 3 <= w <= 9 for w in widths)
    for seed in range(5):
        widths = random_dln_widths(
            jax.random.key(seed), (2, 5), (10, 100), parameter_count_range=(5_000, 10_000)
        )
        count = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
        assert 5_000 <= count <= 10_000
    with pytest.raises(ValueError, match="num_layers_range"):
        random_dln_widths(jax.random.key(0), num_layers_range=(3, 2))
    with pytest.raises(ValueError, match="parameter count"):
        random_dln_widths(
            jax.random.key(0), (2, 2), (2, 3), parameter_count_range=(1_000, 2_000), max_attempts=10
        )


# -------------------------------------------------------------------------------------- MLP


def test_mlp_shapes_and_parameter_count():
    widths = [128, 256, 256, 10]
    params = mlp_init(jax.random.key(0), widths)
    assert [(layer["w"].shape, layer["b"].shape) for layer in params] == [
        ((128, 256), (256,)),
        ((256, 256), (256,)),
        ((256, 10), (10,)),
    ]
    expected = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
    assert expected == 101_386
    assert count_parameters(params) == expected
    # He-normal: std sqrt(2 / fan_in); 32768 samples, relative standard error 0.4%; allow 5%.
    assert abs(float(jnp.std(params[0]["w"])) / np.sqrt(2 / 128) - 1.0) < 0.05
    lecun = mlp_init(jax.random.key(0), widths, initialization="lecun")
    assert abs(float(jnp.std(lecun[0]["w"])) / np.sqrt(1 / 128) - 1.0) < 0.05
    with pytest.raises(ValueError, match="initialization"):
        mlp_init(jax.random.key(0), widths, initialization="xavier")
    x = jax.random.normal(jax.random.key(1), (7, 128))
    assert mlp_apply(params, x).shape == (7, 10)
    assert mlp_apply(params, x[0]).shape == (10,)


def test_mlp_apply_matches_numpy():
    params = mlp_init(jax.random.key(2), [6, 8, 4])
    params[0]["b"] = jnp.asarray(np.arange(8.0, dtype=np.float32) / 10)  # nonzero biases
    params[1]["b"] = jnp.asarray(np.array([0.3, -0.2, 0.1, 0.0], dtype=np.float32))
    x = jax.random.normal(jax.random.key(3), (9, 6))
    hidden = np.maximum(np.asarray(x) @ np.asarray(params[0]["w"]) + np.asarray(params[0]["b"]), 0)
    expected = hidden @ np.asarray(params[1]["w"]) + np.asarray(params[1]["b"])
    np.testing.assert_allclose(mlp_apply(params, x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        mlp_apply(params, x, activation=jnp.tanh),
        np.tanh(np.asarray(x) @ np.asarray(params[0]["w"]) + np.asarray(params[0]["b"]))
        @ np.asarray(params[1]["w"])
        + np.asarray(params[1]["b"]),
        rtol=1e-5,
        atol=1e-6,
    )
    y = jax.random.normal(jax.random.key(4), (9, 4))
    losses = mlp_loss(params, (x, y))
    assert losses.shape == (9,)
    np.testing.assert_allclose(losses, 0.5 * np.sum((expected - np.asarray(y)) ** 2, -1), rtol=1e-5)


def test_mlp_classification_loss_is_negative_log_softmax():
    params = mlp_init(jax.random.key(5), [6, 8, 4])
    x = jax.random.normal(jax.random.key(6), (9, 6))
    labels = jax.random.randint(jax.random.key(7), (9,), 0, 4)
    losses = mlp_classification_loss(params, (x, labels))
    assert losses.shape == (9,)
    logits = np.asarray(mlp_apply(params, x), dtype=np.float64)
    log_softmax = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    expected = -log_softmax[np.arange(9), np.asarray(labels)]
    np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="integers"):
        mlp_classification_loss(params, (x, jnp.zeros(9)))
    with pytest.raises(ValueError, match="labels must have shape"):
        mlp_classification_loss(params, (x, jnp.zeros((9, 1), dtype=jnp.int32)))


def test_losses_under_strict_promotion():
    """The models use no implicit rank promotion or dtype promotion (equinox-style strict mode)."""
    teacher, data, loss_fn = dln_problem(jax.random.key(0), WIDTHS, num_samples=1000)
    params = mlp_init(jax.random.key(1), [6, 8, 4])
    x = jnp.ones((9, 6))
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        assert loss_fn(teacher.params, data).shape == (1000,)
        assert mlp_loss(params, (x, jnp.ones((9, 4)))).shape == (9,)
        labels = jnp.zeros((9,), dtype=jnp.int32)
        assert mlp_classification_loss(params, (x, labels)).shape == (9,)


@pytest.mark.parametrize("widths, seed", [([15, 4, 26], 0), ([11, 7, 6, 10, 55], 3), ([6, 5, 4], 1)])
def test_minimal_rank_teacher_keeps_the_product_and_has_rank_r_layers(widths, seed):
    protocol = make_dln_teacher(jax.random.key(seed), widths)
    minimal = make_dln_teacher(jax.random.key(seed), widths, minimal_rank=True)
    assert minimal.rank == protocol.rank and minimal.true_lambda == protocol.true_lambda

    def product(params):
        return np.linalg.multi_dot([np.asarray(w, np.float64) for w in params])

    scale = np.abs(product(protocol.params)).max()
    np.testing.assert_allclose(product(minimal.params), product(protocol.params), atol=1e-5 * scale)
    for weight in minimal.params:
        singular = np.linalg.svd(np.asarray(weight, np.float64), compute_uv=False)
        # rank r up to float32 rounding of the stored layer
        assert np.sum(singular > 1e-5 * singular[0]) == minimal.rank
