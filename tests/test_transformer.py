"""Tests for slt_jax.models.transformer: shapes, causality, the loss, cached generation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slt_jax.models import count_parameters
from slt_jax.models.transformer import (
    _generate,
    transformer_apply,
    transformer_generate,
    transformer_init,
    transformer_loss,
)

VOCAB, CONTEXT, WIDTH, LAYERS, HEADS = 37, 12, 16, 2, 4


@pytest.fixture(scope="module")
def params():
    return transformer_init(jax.random.key(0), VOCAB, CONTEXT, WIDTH, LAYERS, HEADS)


@pytest.fixture(scope="module")
def tokens():
    return jax.random.randint(jax.random.key(1), (3, CONTEXT + 1), 0, VOCAB)


def test_init_shapes_and_parameter_count(params):
    head_width = WIDTH // HEADS
    assert params["token_embedding"].shape == (VOCAB, WIDTH)
    assert params["position_embedding"].shape == (CONTEXT, WIDTH)
    assert params["blocks"]["attention"]["query"]["w"].shape == (LAYERS, WIDTH, HEADS, head_width)
    assert params["blocks"]["attention"]["output"]["w"].shape == (LAYERS, HEADS, head_width, WIDTH)
    assert params["blocks"]["mlp"]["input"]["w"].shape == (LAYERS, WIDTH, 4 * WIDTH)
    assert params["unembedding"]["w"].shape == (WIDTH, VOCAB)
    per_layer = 4 * WIDTH + 3 * (WIDTH * WIDTH + WIDTH) + (WIDTH * WIDTH + WIDTH)
    per_layer += 2 * 4 * WIDTH * WIDTH + 4 * WIDTH + WIDTH
    expected = VOCAB * WIDTH + CONTEXT * WIDTH + LAYERS * per_layer + 2 * WIDTH + WIDTH * VOCAB + VOCAB
    assert count_parameters(params) == expected
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


def test_benchmark_size_is_about_one_million():
    shapes = jax.eval_shape(lambda k: transformer_init(k, 512, 64, 128, 4, 4), jax.random.key(0))
    assert count_parameters(shapes) == 933_120


def test_init_rejects_bad_heads():
    with pytest.raises(ValueError, match="divisible"):
        transformer_init(jax.random.key(0), VOCAB, CONTEXT, 10, 1, 4)


def test_apply_shapes(params, tokens):
    logits = transformer_apply(params, tokens[:, :-1])
    assert logits.shape == (3, CONTEXT, VOCAB)
    assert transformer_apply(params, tokens[:, :5]).shape == (3, 5, VOCAB)
    with pytest.raises(ValueError, match="context length"):
        transformer_apply(params, jnp.zeros((1, CONTEXT + 1), jnp.int32))
    with pytest.raises(ValueError, match="integer"):
        transformer_apply(params, jnp.zeros((1, 4)))


def test_causality(params, tokens):
    """Changing token j changes no logits at positions < j (and does change position j)."""
    inputs = tokens[:, :-1]
    logits = transformer_apply(params, inputs)
    for j in (0, 5, CONTEXT - 1):
        changed = inputs.at[:, j].set((inputs[:, j] + 1) % VOCAB)
        changed_logits = transformer_apply(params, changed)
        np.testing.assert_array_equal(np.asarray(changed_logits[:, :j]), np.asarray(logits[:, :j]))
        assert not np.allclose(np.asarray(changed_logits[:, j]), np.asarray(logits[:, j]))


def test_prefix_consistency(params, tokens):
    """The logits of a prefix equal the first positions of the logits of the whole sequence."""
    inputs = tokens[:, :-1]
    np.testing.assert_allclose(
        np.asarray(transformer_apply(params, inputs[:, :7])),
        np.asarray(transformer_apply(params, inputs)[:, :7]),
        rtol=1e-5,
        atol=1e-5,
    )


def test_loss_equals_manual_log_softmax(params, tokens):
    losses = transformer_loss(params, tokens)
    assert losses.shape == (3, CONTEXT)
    logits = np.asarray(transformer_apply(params, tokens[:, :-1]), dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    targets = np.asarray(tokens[:, 1:])
    manual = -np.take_along_axis(log_probabilities, targets[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(losses), manual, rtol=1e-5, atol=1e-5)
    pair = transformer_loss(params, (tokens[:, :-1], tokens[:, 1:]))
    np.testing.assert_array_equal(np.asarray(pair), np.asarray(losses))
    # At initialization the model is close to uniform: loss ~ log V.
    assert abs(float(losses.mean()) - np.log(VOCAB)) < 0.1


def test_loss_rejects_mismatched_pair(params, tokens):
    with pytest.raises(ValueError, match="same shape"):
        transformer_loss(params, (tokens[:, :-1], tokens[:, :-2]))


def test_loss_meets_the_sampler_contract():
    """``slt.sample``'s own check accepts the loss ((b, T) floats) and its gradient is finite."""
    from slt_jax.sampling import check_loss_fn

    params = transformer_init(jax.random.key(0), VOCAB, CONTEXT, WIDTH, 1, HEADS)  # quick to compile
    data = jax.random.randint(jax.random.key(2), (16, CONTEXT + 1), 0, VOCAB)
    assert check_loss_fn(transformer_loss, params, data, 4) == (4, CONTEXT)
    grads = jax.jit(jax.grad(lambda p: transformer_loss(p, data[:4]).mean()))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


def test_generate_cache_matches_full_forward(params):
    tokens, logits = _generate(params, jax.random.key(4), jnp.asarray(1.0), 5, CONTEXT)
    assert tokens.shape == (5, CONTEXT + 1)
    np.testing.assert_allclose(
        np.asarray(logits),
        np.asarray(transformer_apply(params, tokens[:, :-1])),
        rtol=1e-4,
        atol=1e-4,
    )
    short = transformer_generate(params, jax.random.key(5), 2, 4)
    assert short.shape == (2, 5)
    assert short.dtype == jnp.int32
    assert int(short.min()) >= 0 and int(short.max()) < VOCAB
