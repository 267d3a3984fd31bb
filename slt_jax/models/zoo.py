r"""A model zoo in Flax NNX for refined LLCs and developmental interpretability.

Every model holds only ``nnx.Param`` variables (no batch statistics, no RNG state), so
``graphdef, params = nnx.split(model, nnx.Param)`` gives the parameter pytree the samplers
move, and every head of every attention layer owns a slice of a named leaf:

* :class:`MLP` — a fully connected network ``layers/i/{kernel,bias}``.
* :class:`ToyModelOfSuperposition` — Elhage et al. 2022 (Toy Models of Superposition):
  :math:`h = W x`, :math:`\hat x = \mathrm{ReLU}(W^\top h + b)`, importance-weighted squared
  error.
* :class:`AttentionOnlyTransformer` — token and position embeddings, ``num_layers`` residual
  attention-only blocks, an unembedding (no MLPs, no layer norm: the induction-head setting of
  Elhage et al. 2021 / Olsson et al. 2022, and arXiv 2410.02984 for per-head refined LLCs).
  Per-head kernels ``blocks/l/attn/{query,key,value}`` of shape ``(num_heads, d_model,
  d_head)`` and ``blocks/l/attn/output`` of shape ``(num_heads, d_head, d_model)``: head
  ``h`` of layer ``l`` is the slice ``[h]`` of those four leaves.
* :class:`InContextRegressionTransformer` — in-context linear regression (Garg et al. 2022;
  Raventós et al. 2023; arXiv 2501.17745): the tokens are the interleaved pairs
  :math:`(x_1, y_1, \dots, x_K, y_K)` embedded as :math:`(0, x_k)` and :math:`(y_k, 0)`; the
  prediction of :math:`y_k` is read at the position of :math:`x_k` (it sees
  :math:`x_{1..k}, y_{1..k-1}`). Pre-norm blocks with the same per-head attention and a GELU MLP.

Losses take the model and a batch and return per-example (per-token) losses, as the adapters
and :func:`slt_jax.training.train` expect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = [
    "MLP",
    "AttentionOnlyTransformer",
    "InContextRegressionTransformer",
    "MultiHeadAttention",
    "ToyModelOfSuperposition",
    "cross_entropy_loss",
    "icl_loss",
    "mse_loss",
    "next_token_loss",
    "tms_loss",
]

_ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "gelu": jax.nn.gelu}


def _normal(rngs: nnx.Rngs, shape, standard_deviation) -> nnx.Param:
    return nnx.Param(standard_deviation * jax.random.normal(rngs.params(), shape))


def _add_trailing(x: jax.Array, bias: jax.Array) -> jax.Array:
    """``x + bias`` over the trailing axes, the broadcast spelled out (no rank promotion)."""
    return x + bias.reshape((1,) * (x.ndim - bias.ndim) + bias.shape)


# --------------------------------------------------------------------------------------------
# MLP and the toy model of superposition
# --------------------------------------------------------------------------------------------


class Dense(nnx.Module):
    """``x @ kernel + bias`` with ``kernel ~ N(0, gain / fan_in)`` and zero bias."""

    def __init__(self, fan_in: int, fan_out: int, *, gain: float = 1.0, rngs: nnx.Rngs):
        self.kernel = _normal(rngs, (fan_in, fan_out), math.sqrt(gain / fan_in))
        self.bias = nnx.Param(jnp.zeros((fan_out,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return _add_trailing(x @ self.kernel[...], self.bias[...])


class MLP(nnx.Module):
    """A fully connected network ``widths[0] -> ... -> widths[-1]``.

    Hidden layers apply ``activation`` (``"relu"``, ``"tanh"`` or ``"gelu"``); the last layer is
    linear. Parameters: ``layers/i/kernel`` ``(widths[i], widths[i+1])``, ``layers/i/bias``.
    He initialization for ReLU/GELU, LeCun for tanh.
    """

    def __init__(self, widths: Sequence[int], *, activation: str = "relu", rngs: nnx.Rngs):
        widths = [int(w) for w in widths]
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"widths must be at least two positive integers, got {widths}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        gain = 1.0 if activation == "tanh" else 2.0
        self.activation = activation
        self.layers = nnx.List(
            [Dense(a, b, gain=gain, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = _ACTIVATIONS[self.activation](layer(x))
        return self.layers[-1](x)


def mse_loss(model: nnx.Module, batch: dict) -> jax.Array:
    r"""Per-example :math:`\tfrac12\lVert f(x) - y\rVert^2` for ``batch = {"x", "y"}``: ``(b,)``."""
    return 0.5 * jnp.sum(jnp.square(model(batch["x"]) - batch["y"]), axis=-1)


def cross_entropy_loss(model: nnx.Module, batch: dict) -> jax.Array:
    """Per-example softmax cross entropy for ``batch = {"x", "y"}`` (integer labels): ``(b,)``."""
    logits = jax.nn.log_softmax(model(batch["x"]), axis=-1)
    return -jnp.take_along_axis(logits, batch["y"][:, None], axis=-1)[:, 0]


class ToyModelOfSuperposition(nnx.Module):
    r"""Elhage et al. 2022: compress ``F`` sparse features into ``m < F`` dimensions.

    .. math::

        h = W x,\qquad \hat x = \mathrm{ReLU}(W^\top h + b),\qquad
        \ell(x) = \sum_i I_i\,(x_i - \hat x_i)^2

    ``W`` has shape ``(num_hidden, num_features)`` (columns are the feature directions), ``b``
    shape ``(num_features,)``; ``importance`` :math:`I_i` defaults to ``importance_decay**i``
    and is a constant of the model (static, never sampled). Initialization: Xavier-normal ``W``,
    zero ``b``.
    """

    def __init__(self, num_features: int = 5, num_hidden: int = 2, *,
                 importance: Sequence[float] | None = None, importance_decay: float = 0.9,
                 rngs: nnx.Rngs):
        if num_features < 1 or num_hidden < 1:
            raise ValueError("num_features and num_hidden must be positive")
        if importance is None:
            importance = [importance_decay**i for i in range(num_features)]
        if len(importance) != num_features:
            raise ValueError(
                f"importance has {len(importance)} entries; expected num_features={num_features}"
            )
        self.importance = tuple(float(v) for v in importance)
        self.W = _normal(rngs, (num_hidden, num_features), math.sqrt(2.0 / (num_hidden + num_features)))
        self.b = nnx.Param(jnp.zeros((num_features,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = x @ self.W[...].T
        return jax.nn.relu(_add_trailing(hidden @ self.W[...], self.b[...]))


def tms_loss(model: ToyModelOfSuperposition, batch: dict) -> jax.Array:
    r"""Per-example importance-weighted reconstruction error :math:`\sum_i I_i (x_i-\hat x_i)^2`."""
    x = batch["x"]
    importance = jnp.asarray(model.importance, x.dtype)
    return jnp.sum(jnp.square(x - model(x)) * importance[None, :], axis=-1)


# --------------------------------------------------------------------------------------------
# Attention with per-head parameters
# --------------------------------------------------------------------------------------------


class MultiHeadAttention(nnx.Module):
    r"""Causal multi-head softmax attention whose heads are slices of named leaves.

    .. math::

        \mathrm{Attn}(x)_s = \sum_{h} \sum_{r \le s}
            \mathrm{softmax}_r\!\big(q^h_s\cdot k^h_r/\sqrt{d_h}\big)\, v^h_r\, O^h,\qquad
        q^h = x Q^h,\ k^h = x K^h,\ v^h = x V^h

    Leaves ``query``, ``key``, ``value``: ``(num_heads, d_model, d_head)``; ``output``:
    ``(num_heads, d_head, d_model)``; no biases, so head ``h`` is exactly the slices ``[h]``.
    Initialization :math:`N(0, 1/d_{model})` for Q, K, V and :math:`N(0, 1/(H d_h))` for O.
    """

    def __init__(self, d_model: int, num_heads: int, d_head: int, *, rngs: nnx.Rngs):
        shape = (num_heads, d_model, d_head)
        self.query = _normal(rngs, shape, 1.0 / math.sqrt(d_model))
        self.key = _normal(rngs, shape, 1.0 / math.sqrt(d_model))
        self.value = _normal(rngs, shape, 1.0 / math.sqrt(d_model))
        self.output = _normal(rngs, (num_heads, d_head, d_model), 1.0 / math.sqrt(num_heads * d_head))

    def pattern(self, x: jax.Array) -> jax.Array:
        """Attention weights ``(b, H, T, T)`` (row ``s``: where position ``s`` looks)."""
        query = jnp.einsum("btd,hdk->bhtk", x, self.query[...])
        key = jnp.einsum("btd,hdk->bhtk", x, self.key[...])
        length, head_width = x.shape[1], query.shape[-1]
        scores = jnp.einsum("bhtk,bhsk->bhts", query, key) / math.sqrt(head_width)
        causal = jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]
        return jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)

    def __call__(self, x: jax.Array) -> jax.Array:
        value = jnp.einsum("btd,hdk->bhtk", x, self.value[...])
        mixed = jnp.einsum("bhts,bhsk->bhtk", self.pattern(x), value)
        return jnp.einsum("bhtk,hkd->btd", mixed, self.output[...])


class AttentionOnlyBlock(nnx.Module):
    """``x + Attn(x)`` (attention-only residual block; the attention is ``attn``)."""

    def __init__(self, d_model: int, num_heads: int, d_head: int, *, rngs: nnx.Rngs):
        self.attn = MultiHeadAttention(d_model, num_heads, d_head, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.attn(x)


class AttentionOnlyTransformer(nnx.Module):
    r"""A causal attention-only transformer language model (default: 2 layers × 4 heads).

    .. math::

        x^{(0)}_s = E[t_s] + P_s,\qquad x^{(l+1)} = x^{(l)} + \mathrm{Attn}_l(x^{(l)}),\qquad
        \mathrm{logits}_s = x^{(L)}_s U

    Parameters: ``embedding`` ``(V, d)``, ``position`` ``(T, d)``, ``blocks/l/attn/{query,key,
    value}`` ``(H, d, d_h)``, ``blocks/l/attn/output`` ``(H, d_h, d)``, ``unembedding``
    ``(d, V)``. Two layers are the minimum for induction heads (a previous-token head in layer
    0 composing with an induction head in layer 1; Olsson et al. 2022), which form when it is
    trained on sequences with repeated sub-sequences (:func:`slt_jax.data.make_induction_data`).
    """

    def __init__(self, vocab_size: int = 16, context_length: int = 16, *, d_model: int = 32,
                 num_layers: int = 2, num_heads: int = 4, d_head: int = 8, rngs: nnx.Rngs):
        for name, value in dict(vocab_size=vocab_size, context_length=context_length,
                                d_model=d_model, num_layers=num_layers, num_heads=num_heads,
                                d_head=d_head).items():
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.embedding = _normal(rngs, (vocab_size, d_model), 1.0)
        self.position = _normal(rngs, (context_length, d_model), 1.0)
        self.blocks = nnx.List(
            [AttentionOnlyBlock(d_model, num_heads, d_head, rngs=rngs) for _ in range(num_layers)]
        )
        self.unembedding = _normal(rngs, (d_model, vocab_size), 1.0 / math.sqrt(d_model))

    @property
    def num_heads(self) -> int:
        """Attention heads per layer."""
        return self.blocks[0].attn.query.shape[0]

    def residual(self, tokens: jax.Array) -> jax.Array:
        """The embedded tokens ``(b, T, d)``."""
        length = tokens.shape[1]
        if length > self.position.shape[0]:
            raise ValueError(
                f"tokens have length {length} but the context length is {self.position.shape[0]}"
            )
        embedded = jnp.take(self.embedding[...], tokens, axis=0)
        return embedded + self.position[...][None, :length]

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Next-token logits ``(b, T, V)`` for integer ``tokens`` ``(b, T)``."""
        x = self.residual(tokens)
        for block in self.blocks:
            x = block(x)
        return x @ self.unembedding[...]

    def attention_patterns(self, tokens: jax.Array) -> list[jax.Array]:
        """Per layer the attention weights ``(b, H, T, T)``."""
        x, patterns = self.residual(tokens), []
        for block in self.blocks:
            patterns.append(block.attn.pattern(x))
            x = block(x)
        return patterns


def next_token_loss(model: nnx.Module, batch: dict) -> jax.Array:
    """Per-token cross entropy of predicting ``tokens[:, s+1]`` from ``tokens[:, :s+1]``:
    ``(b, T-1)`` for ``batch = {"tokens": (b, T)}``."""
    tokens = batch["tokens"]
    logits = jax.nn.log_softmax(model(tokens[:, :-1]), axis=-1)
    return -jnp.take_along_axis(logits, tokens[:, 1:, None], axis=-1)[..., 0]


# --------------------------------------------------------------------------------------------
# In-context linear regression
# --------------------------------------------------------------------------------------------


class LayerNorm(nnx.Module):
    """Layer norm (ε = 1e-5) with ``scale`` and ``bias`` of shape ``(d,)``."""

    def __init__(self, width: int):
        self.scale = nnx.Param(jnp.ones((width,)))
        self.bias = nnx.Param(jnp.zeros((width,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        variance = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        normalized = (x - mean) * jax.lax.rsqrt(variance + 1e-5)
        return _add_trailing(normalized * self.scale[...].reshape((1,) * (x.ndim - 1) + (-1,)),
                             self.bias[...])


class TransformerBlock(nnx.Module):
    """Pre-norm block ``y = x + Attn(LN(x)); y + MLP(LN(y))`` (GELU MLP)."""

    def __init__(self, d_model: int, num_heads: int, d_head: int, mlp_width: int, *,
                 rngs: nnx.Rngs):
        self.attn_norm = LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, num_heads, d_head, rngs=rngs)
        self.mlp_norm = LayerNorm(d_model)
        self.mlp_in = Dense(d_model, mlp_width, gain=2.0, rngs=rngs)
        self.mlp_out = Dense(mlp_width, d_model, gain=1.0, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x))))


class InContextRegressionTransformer(nnx.Module):
    r"""A transformer predicting :math:`y_k` from :math:`(x_1, y_1, \dots, x_{k-1}, y_{k-1}, x_k)`.

    Defaults follow arXiv 2501.17745 in spirit at a small size: task dimension ``D = 4``,
    ``K = 16`` context pairs, 2 pre-norm layers of ``d_model = 32`` with 2 heads and a GELU MLP.
    The ``2K`` tokens are :math:`(0, x_k) \in \mathbb R^{1+D}` and :math:`(y_k, 0)`; a linear
    ``embedding`` and learned ``position`` embedding map them to ``d_model``; the ``readout``
    at the :math:`x_k` positions gives the predictions ``(b, K)``.
    """

    def __init__(self, task_dim: int = 4, num_context: int = 16, *, d_model: int = 32,
                 num_layers: int = 2, num_heads: int = 2, d_head: int = 16, mlp_width: int = 64,
                 rngs: nnx.Rngs):
        self.embedding = Dense(task_dim + 1, d_model, rngs=rngs)
        self.position = _normal(rngs, (2 * num_context, d_model), 1.0)
        self.blocks = nnx.List([
            TransformerBlock(d_model, num_heads, d_head, mlp_width, rngs=rngs)
            for _ in range(num_layers)
        ])
        self.final_norm = LayerNorm(d_model)
        self.readout = Dense(d_model, 1, rngs=rngs)

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """Predictions ``(b, K)`` of ``y`` from ``x`` ``(b, K, D)`` and ``y`` ``(b, K)``."""
        batch, length, dim = x.shape
        x_tokens = jnp.concatenate([jnp.zeros((batch, length, 1), x.dtype), x], axis=-1)
        y_tokens = jnp.concatenate([y[..., None], jnp.zeros((batch, length, dim), x.dtype)], axis=-1)
        tokens = jnp.stack([x_tokens, y_tokens], axis=2).reshape(batch, 2 * length, dim + 1)
        h = self.embedding(tokens) + self.position[...][None, : 2 * length]
        for block in self.blocks:
            h = block(h)
        return self.readout(self.final_norm(h[:, 0::2]))[..., 0]


def icl_loss(model: InContextRegressionTransformer, batch: dict) -> jax.Array:
    """Per-(sequence, position) squared error ``(b, K)`` for ``batch = {"x", "y"}``."""
    return jnp.square(model(batch["x"], batch["y"]) - batch["y"])
