r"""A decoder-only transformer language model as a plain dict pytree (GPT-2 style, pre-norm).

For tokens :math:`t_1, \dots, t_T` the model computes

.. math::

    x^{(0)}_s &= E[t_s] + P[s] \\
    x^{(l+1)} &= y^{(l)} + \mathrm{MLP}_l(\mathrm{LN}(y^{(l)})),\qquad
    y^{(l)} = x^{(l)} + \mathrm{Attn}_l(\mathrm{LN}(x^{(l)})) \\
    \mathrm{logits}_s &= \mathrm{LN}(x^{(L)}_s)\, W_U + b_U

with causal multi-head softmax attention
:math:`\mathrm{Attn}(h)_s = \sum_{k} \sum_{r \le s} \mathrm{softmax}_r(q^k_s \cdot k^k_r / \sqrt{d_h})\,
v^k_r W_O^k + b_O`, a GELU MLP of width ``mlp_width`` (exact, erf-based GELU, as
``torch.nn.GELU()``), and layer norm with :math:`\epsilon = 10^{-5}` (as ``torch.nn.LayerNorm``).

Parameters (``params``) are a dict; the ``num_layers`` blocks are *stacked* along a leading
layer axis, and the head structure is in the shapes, so ``params`` alone determines the
architecture::

    token_embedding      (V, d)            position_embedding   (T, d)
    blocks/attention_norm/{scale,bias}     (L, d)
    blocks/attention/{query,key,value}/w   (L, d, H, d_h)     .../b  (L, H, d_h)
    blocks/attention/output/w              (L, H, d_h, d)     .../b  (L, d)
    blocks/mlp_norm/{scale,bias}           (L, d)
    blocks/mlp/input/w  (L, d, m)   .../b (L, m)     blocks/mlp/output/w (L, m, d)   .../b (L, d)
    final_norm/{scale,bias}                (d,)
    unembedding/w (d, V)   unembedding/b (V,)

Because every head has its own leaf slice, a weight restriction to one head or one layer is a
boolean mask of the same shapes (docs/mathematics.md §2, refined LLCs).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "transformer_apply",
    "transformer_generate",
    "transformer_init",
    "transformer_loss",
]

LAYER_NORM_EPSILON = 1e-5
INITIALIZATION_SCALE = 0.02


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def transformer_init(
    key: jax.Array,
    vocab_size: int,
    context_length: int,
    d_model: int,
    num_layers: int,
    num_heads: int,
    *,
    mlp_width: int | None = None,
    dtype: Any = None,
) -> dict:
    r"""Initialize a decoder-only transformer language model (GPT-2 initialization).

    Embeddings, attention and MLP input weights and the unembedding are i.i.d.
    :math:`N(0, 0.02^2)`; the two projections that write into the residual stream (attention
    output and MLP output) are :math:`N(0, (0.02/\sqrt{2L})^2)` (Radford et al. 2019); biases
    are 0, layer-norm scales 1 and shifts 0.

    Args:
      key: a JAX PRNG key.
      vocab_size: number of tokens ``V``.
      context_length: the longest input ``T`` (rows of the position embedding).
      d_model: residual width ``d``; must be divisible by ``num_heads``.
      num_layers: number of transformer blocks ``L``.
      num_heads: attention heads ``H`` per block (head width ``d_h = d / H``).
      mlp_width: hidden width ``m`` of each MLP (default ``4 d``).
      dtype: float dtype of the parameters (default: JAX's default float dtype).

    Returns:
      The parameter dict described in the module docstring. With ``V=512, T=64, d=128, L=4,
      H=4`` it has 933,120 parameters.
    """
    vocab_size = _check_positive_int("vocab_size", vocab_size)
    context_length = _check_positive_int("context_length", context_length)
    d_model = _check_positive_int("d_model", d_model)
    num_layers = _check_positive_int("num_layers", num_layers)
    num_heads = _check_positive_int("num_heads", num_heads)
    if d_model % num_heads:
        raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}.")
    mlp_width = 4 * d_model if mlp_width is None else _check_positive_int("mlp_width", mlp_width)
    if dtype is None:
        dtype = jnp.result_type(float)
    return _transformer_init(
        key, vocab_size, context_length, d_model, num_layers, num_heads, mlp_width, dtype
    )


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5, 6, 7))
def _transformer_init(key, vocab_size, context_length, d_model, num_layers, num_heads, mlp_width, dtype):
    L, d, H, m = num_layers, d_model, num_heads, mlp_width
    k = d // H
    residual_scale = INITIALIZATION_SCALE / math.sqrt(2 * L)
    # (shape, standard deviation) of every Gaussian leaf, in the order they are cut from one
    # normal draw (one threefry program instead of one per leaf: much faster to compile).
    gaussian = {
        "token_embedding": ((vocab_size, d), INITIALIZATION_SCALE),
        "position_embedding": ((context_length, d), INITIALIZATION_SCALE),
        "query": ((L, d, H, k), INITIALIZATION_SCALE),
        "key": ((L, d, H, k), INITIALIZATION_SCALE),
        "value": ((L, d, H, k), INITIALIZATION_SCALE),
        "output": ((L, H, k, d), residual_scale),
        "mlp_input": ((L, d, m), INITIALIZATION_SCALE),
        "mlp_output": ((L, m, d), residual_scale),
        "unembedding": ((d, vocab_size), INITIALIZATION_SCALE),
    }
    sizes = [math.prod(shape) for shape, _ in gaussian.values()]
    noise = jax.random.normal(key, (sum(sizes),), dtype)
    w = {}
    offset = 0
    for (name, (shape, scale)), size in zip(gaussian.items(), sizes):
        w[name] = scale * noise[offset : offset + size].reshape(shape)
        offset += size

    def zeros(*shape):
        return jnp.zeros(shape, dtype)

    def ones(*shape):
        return jnp.ones(shape, dtype)

    return {
        "token_embedding": w["token_embedding"],
        "position_embedding": w["position_embedding"],
        "blocks": {
            "attention_norm": {"scale": ones(L, d), "bias": zeros(L, d)},
            "attention": {
                "query": {"w": w["query"], "b": zeros(L, H, k)},
                "key": {"w": w["key"], "b": zeros(L, H, k)},
                "value": {"w": w["value"], "b": zeros(L, H, k)},
                "output": {"w": w["output"], "b": zeros(L, d)},
            },
            "mlp_norm": {"scale": ones(L, d), "bias": zeros(L, d)},
            "mlp": {
                "input": {"w": w["mlp_input"], "b": zeros(L, m)},
                "output": {"w": w["mlp_output"], "b": zeros(L, d)},
            },
        },
        "final_norm": {"scale": ones(d), "bias": zeros(d)},
        "unembedding": {"w": w["unembedding"], "b": zeros(vocab_size)},
    }


# --------------------------------------------------------------------------------------------
# Forward pass
# --------------------------------------------------------------------------------------------


def _add_bias(x: jax.Array, bias: jax.Array) -> jax.Array:
    """``x + bias`` over the trailing axes, with the broadcast spelled out (no rank promotion)."""
    return x + bias.reshape((1,) * (x.ndim - bias.ndim) + bias.shape)


def _layer_norm(x: jax.Array, norm: dict) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    normalized = (x - mean) * jax.lax.rsqrt(variance + LAYER_NORM_EPSILON)
    return _add_bias(normalized * norm["scale"].reshape((1,) * (x.ndim - 1) + (-1,)), norm["bias"])


def _block(x: jax.Array, block: dict) -> jax.Array:
    """One pre-norm block on ``x`` of shape ``(b, T, d)`` (parameters of one layer).

    Laid out for XLA's CPU backend (measured, ``benchmarks/vs_devinterp.py``): one fused
    ``(b T, d) @ (d, 3 d)`` projection for queries, keys and values, attention in
    ``(b, H, T, d_h)`` layout and 2-D matrix products elsewhere cut layout copies, about 15% of
    a forward + backward pass against per-head einsums.
    """
    batch, length, width = x.shape
    attention = block["attention"]
    num_heads, head_width = attention["query"]["w"].shape[1:]
    h = _layer_norm(x, block["attention_norm"]).reshape(batch * length, width)
    names = ("query", "key", "value")
    weight = jnp.concatenate([attention[n]["w"].reshape(width, num_heads * head_width) for n in names], axis=1)
    bias = jnp.concatenate([attention[n]["b"].reshape(num_heads * head_width) for n in names])
    projected = _add_bias(h @ weight, bias).reshape(batch, length, 3, num_heads, head_width)
    query, key, value = jnp.moveaxis(projected, (2, 3), (0, 2))  # each (b, H, T, d_h)
    scores = jnp.einsum("bhqk,bhsk->bhqs", query, key) / jnp.sqrt(jnp.asarray(head_width, x.dtype))
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]
    weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    mixed = jnp.einsum("bhqs,bhsk->bqhk", weights, value).reshape(batch * length, num_heads * head_width)
    output = attention["output"]
    attended = _add_bias(mixed @ output["w"].reshape(num_heads * head_width, width), output["b"])
    x = x + attended.reshape(batch, length, width)
    mlp = block["mlp"]
    h = _layer_norm(x, block["mlp_norm"]).reshape(batch * length, width)
    h = jax.nn.gelu(_add_bias(h @ mlp["input"]["w"], mlp["input"]["b"]), approximate=False)
    return x + _add_bias(h @ mlp["output"]["w"], mlp["output"]["b"]).reshape(batch, length, width)


def _validate_tokens(params: dict, tokens: Any, name: str = "tokens") -> jax.Array:
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"{name} must be integer token ids, got dtype {tokens.dtype}.")
    if tokens.ndim != 2:
        raise ValueError(f"{name} must have shape (batch, length), got {tokens.shape}.")
    context_length = params["position_embedding"].shape[0]
    if tokens.shape[1] > context_length:
        raise ValueError(
            f"{name} has length {tokens.shape[1]} but the model's context length is "
            f"{context_length}."
        )
    return tokens


def transformer_apply(params: dict, tokens: jax.typing.ArrayLike) -> jax.Array:
    r"""Next-token logits of a batch of token sequences.

    Position ``s`` of the output depends only on ``tokens[:, :s+1]`` (causal attention).

    Args:
      params: from :func:`transformer_init`.
      tokens: integer token ids of shape ``(b, T)`` with ``T <=`` the context length.

    Returns:
      Logits of shape ``(b, T, V)``; ``logits[:, s]`` predicts ``tokens[:, s+1]``.
    """
    tokens = _validate_tokens(params, tokens)
    return _transformer_apply(params, tokens)


@jax.jit
def _transformer_apply(params: dict, tokens: jax.Array) -> jax.Array:
    length = tokens.shape[1]
    x = jnp.take(params["token_embedding"], tokens, axis=0)
    x = x + params["position_embedding"][None, :length]
    # A Python loop over the stacked layers (unrolled): measured faster on CPU than lax.scan,
    # whose backward pass stacks every layer's activations into fresh buffers.
    num_layers = params["blocks"]["attention_norm"]["scale"].shape[0]
    for layer in range(num_layers):
        x = _block(x, jax.tree.map(lambda leaf: leaf[layer], params["blocks"]))
    x = _layer_norm(x, params["final_norm"])
    return _add_bias(x @ params["unembedding"]["w"], params["unembedding"]["b"])


def transformer_loss(params: dict, batch: Any) -> jax.Array:
    r"""Per-token next-token cross-entropy, shape ``(b, T)``.

    .. math::

        \ell_{i,s}(w) = -\log \operatorname{softmax}\big(f(t_{i,1..s}; w)_s\big)[t_{i,s+1}],

    the per-token negative log-likelihood (docs/mathematics.md §0); ``slt_jax.sample`` averages it over
    examples and tokens for :math:`L_B`.

    Args:
      params: from :func:`transformer_init`.
      batch: either integer tokens of shape ``(b, T+1)`` (inputs ``tokens[:, :-1]``, targets
        ``tokens[:, 1:]``) or a pair ``(inputs, targets)`` of shape ``(b, T)`` each.

    Returns:
      Losses of shape ``(b, T)``.
    """
    if isinstance(batch, (tuple, list)):
        if len(batch) != 2:
            raise ValueError("batch must be tokens (b, T+1) or a pair (inputs, targets).")
        inputs, targets = (jnp.asarray(part) for part in batch)
        if inputs.shape != targets.shape:
            raise ValueError(
                f"inputs and targets must have the same shape (b, T), got {inputs.shape} and "
                f"{targets.shape}."
            )
    else:
        tokens = jnp.asarray(batch)
        if tokens.ndim != 2 or tokens.shape[1] < 2:
            raise ValueError(f"tokens must have shape (b, T+1) with T >= 1, got {tokens.shape}.")
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
    inputs = _validate_tokens(params, inputs, "inputs")
    targets = _validate_tokens(params, targets, "targets")
    return _transformer_loss(params, inputs, targets)


@jax.jit
def _transformer_loss(params: dict, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    log_probabilities = jax.nn.log_softmax(_transformer_apply(params, inputs), axis=-1)
    return -jnp.take_along_axis(log_probabilities, targets[..., None], axis=-1)[..., 0]


# --------------------------------------------------------------------------------------------
# Sampling sequences from a model (teacher data), with a key/value cache
# --------------------------------------------------------------------------------------------


def transformer_generate(
    params: dict,
    key: jax.Array,
    num_sequences: int,
    length: int | None = None,
    *,
    temperature: float = 1.0,
) -> jax.Array:
    r"""Sample token sequences from the model: synthetic data for which ``params`` is the truth.

    The first token of each sequence is uniform on the vocabulary; token :math:`s+1` is drawn
    from :math:`\operatorname{softmax}(\mathrm{logits}_s/\tau)` given tokens :math:`1..s`.
    Keys and values of earlier positions are cached, so the cost is one forward pass over the
    sequences rather than one per position.

    Args:
      params: from :func:`transformer_init`.
      key: a JAX PRNG key.
      num_sequences: number of sequences ``b``.
      length: number of sampled next tokens ``T`` (default: the context length).
      temperature: :math:`\tau > 0`.

    Returns:
      Integer tokens of shape ``(b, T+1)``, ready for :func:`transformer_loss`.
    """
    context_length = params["position_embedding"].shape[0]
    num_sequences = _check_positive_int("num_sequences", num_sequences)
    length = context_length if length is None else _check_positive_int("length", length)
    if length > context_length:
        raise ValueError(f"length={length} exceeds the context length {context_length}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    tokens, _ = _generate(params, key, jnp.asarray(temperature), num_sequences, length)
    return tokens


@functools.partial(jax.jit, static_argnums=(3, 4))
def _generate(params, key, temperature, num_sequences, length):
    """Tokens ``(b, length+1)`` and the logits ``(b, length, V)`` they were sampled from."""
    blocks = params["blocks"]
    num_layers, _, num_heads, head_width = blocks["attention"]["query"]["w"].shape
    vocab_size = params["token_embedding"].shape[0]
    dtype = params["token_embedding"].dtype
    cache_shape = (num_layers, num_sequences, length, num_heads, head_width)
    first_key, step_keys = jax.random.split(key)
    first = jax.random.randint(first_key, (num_sequences,), 0, vocab_size)

    def decode(carry, inputs):
        token, keys_cache, values_cache = carry
        position, step_key = inputs
        x = jnp.take(params["token_embedding"], token, axis=0) + params["position_embedding"][position][None]
        visible = (jnp.arange(length) <= position)[None, None, :]

        def layer(x, layer_inputs):
            block, layer_keys, layer_values = layer_inputs
            attention = block["attention"]
            h = _layer_norm(x, block["attention_norm"])
            project = lambda name: _add_bias(
                jnp.einsum("bd,dhk->bhk", h, attention[name]["w"]), attention[name]["b"]
            )
            query, new_key, new_value = project("query"), project("key"), project("value")
            layer_keys = jax.lax.dynamic_update_slice_in_dim(layer_keys, new_key[:, None], position, 1)
            layer_values = jax.lax.dynamic_update_slice_in_dim(layer_values, new_value[:, None], position, 1)
            scores = jnp.einsum("bhk,bshk->bhs", query, layer_keys) / jnp.sqrt(jnp.asarray(head_width, dtype))
            weights = jax.nn.softmax(jnp.where(visible, scores, -jnp.inf), axis=-1)
            mixed = jnp.einsum("bhs,bshk->bhk", weights, layer_values)
            x = x + _add_bias(jnp.einsum("bhk,hkd->bd", mixed, attention["output"]["w"]), attention["output"]["b"])
            mlp = block["mlp"]
            h = _layer_norm(x, block["mlp_norm"])
            h = jax.nn.gelu(_add_bias(h @ mlp["input"]["w"], mlp["input"]["b"]), approximate=False)
            return x + _add_bias(h @ mlp["output"]["w"], mlp["output"]["b"]), (layer_keys, layer_values)

        x, (keys_cache, values_cache) = jax.lax.scan(layer, x, (blocks, keys_cache, values_cache))
        logits = _add_bias(_layer_norm(x, params["final_norm"]) @ params["unembedding"]["w"], params["unembedding"]["b"])
        token = jax.random.categorical(step_key, logits / temperature.astype(dtype), axis=-1)
        return (token, keys_cache, values_cache), (token, logits)

    empty = jnp.zeros(cache_shape, dtype)
    _, (tokens, logits) = jax.lax.scan(
        decode,
        (first, empty, empty),
        (jnp.arange(length), jax.random.split(step_keys, length)),
    )
    tokens = jnp.concatenate([first[:, None], jnp.swapaxes(tokens, 0, 1)], axis=1)
    return tokens, jnp.swapaxes(logits, 0, 1)
