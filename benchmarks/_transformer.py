"""The attention-only transformer the refined-LLC benchmarks share (notebooks/refined_llc.ipynb's
model): trained on induction sequences, with one mask per head.

Imported by ``llc_sweep.py``, ``sweep_heads_time.py`` and ``head_llc_time.py`` (run as scripts
from the repository root, so ``benchmarks/`` is on ``sys.path``).
"""

from __future__ import annotations


def trained_transformer(*, examples=4096, d_model=32, heads=4, train_steps=3000,
                        checkpoints=10):
    """``(loss_fn, run, params, data, masks)``: ``AttentionOnlyTransformer`` (vocabulary 16,
    length 16, 2 layers of ``heads`` heads of width ``d_model // heads``) trained with Adam
    (3e-3, batch 32) on ``examples`` induction sequences; ``params`` are the **trained**
    parameters (``train()`` leaves the module as it was) and ``masks`` one per head,
    ``"L{layer}H{head}"``."""
    import jax
    import optax
    from flax import nnx

    import slt_jax as slt

    data = {"tokens": slt.data.make_induction_data(jax.random.key(0), examples, 16, 16)["tokens"]}
    model = slt.models.AttentionOnlyTransformer(16, 16, d_model=d_model, num_heads=heads,
                                                d_head=d_model // heads, rngs=nnx.Rngs(0))
    run = slt.training.train(model, slt.models.next_token_loss, data, optax.adam(3e-3),
                             key=jax.random.key(1), num_steps=train_steps, batch_size=32,
                             num_checkpoints=checkpoints)
    loss_fn, _ = slt.adapters.from_nnx(model, slt.models.next_token_loss)
    params = slt.adapters.as_params(loss_fn, run)
    masks = {f"L{layer}H{head}": slt.masks.head(params, f"blocks/{layer}/attn/*", head=head,
                                                  axis=0)
             for layer in range(2) for head in range(heads)}
    return loss_fn, run, params, data, masks
