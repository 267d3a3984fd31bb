"""devinterp 2.0.1 side of ``benchmarks/vs_devinterp.py`` (run as a subprocess in its own venv).

Usage (the driver builds these arguments)::

    benchmarks/.devinterp/.venv/bin/python benchmarks/_devinterp_side.py \
        --config /tmp/slt_vs_devinterp/dln.json --seed 0 --output /tmp/.../samples.zarr

Loads the same ``.npz`` as the slt_jax side, builds the same model in PyTorch with the same
weights ``w*``, checks that its loss at ``w*`` equals the JAX loss stored in the config, then
times one call of ``devinterp.slt.llc.llc`` (devinterp v2's sampling entry point: init loss,
SGLD chains with ``SGMCMC.sgld``, zarr writing, LLC reduction).

devinterp v2's pipeline is built for language models: the dataset is a HuggingFace
``Dataset`` with an ``input_ids`` column and the loss is ``loss_fn(model, input_ids) ->
(batch, seq - 1)``. For the regression tasks (DLN, MLP) each row's ``input_ids`` is
``[i, i]`` (the example's index; sequence length 2, so one "token" position) and ``loss_fn``
gathers ``x[i], y[i]`` and returns ``½‖f(x) − y‖²`` of shape ``(b, 1)``. For the transformer
``input_ids`` are the tokens ``(T + 1)`` and ``loss_fn`` returns the per-token next-token
cross-entropy of the model run on ``input_ids[:, :-1]``, shape ``(b, T)``, exactly as the
slt_jax side's ``transformer_loss``.

Prints one JSON line (prefixed ``RESULT``).
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


# --------------------------------------------------------------------------------------------
# The models, written the way a PyTorch user would (nn.Linear, nn.LayerNorm, SDPA), loaded with
# the JAX side's weights. JAX stores a dense layer as x @ W (W: (in, out)); nn.Linear stores W^T.
# --------------------------------------------------------------------------------------------


def _load_linear(linear: nn.Linear, weight: np.ndarray, bias: np.ndarray | None = None) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight.T)))
        if bias is not None:
            linear.bias.copy_(torch.from_numpy(bias))


class DeepLinearNetwork(nn.Module):
    """``f(x) = x W_0 W_1 ... W_{L-1}`` with bias-free ``nn.Linear`` layers."""

    def __init__(self, weights: list[np.ndarray]):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(w.shape[0], w.shape[1], bias=False) for w in weights)
        for layer, weight in zip(self.layers, weights):
            _load_linear(layer, weight)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class MultilayerPerceptron(nn.Module):
    """ReLU MLP, no activation after the last layer (as ``slt_jax.models.mlp_apply``)."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]]):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(w.shape[0], w.shape[1]) for w, _ in layers)
        for layer, (weight, bias) in zip(self.layers, layers):
            _load_linear(layer, weight, bias)

    def forward(self, x):
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < last:
                x = F.relu(x)
        return x


class Block(nn.Module):
    """Pre-norm transformer block: causal multi-head attention and a GELU MLP."""

    def __init__(self, d_model: int, num_heads: int, mlp_width: int):
        super().__init__()
        self.num_heads = num_heads
        self.attention_norm = nn.LayerNorm(d_model, eps=1e-5)
        self.query_key_value = nn.Linear(d_model, 3 * d_model)
        self.attention_output = nn.Linear(d_model, d_model)
        self.mlp_norm = nn.LayerNorm(d_model, eps=1e-5)
        self.mlp_input = nn.Linear(d_model, mlp_width)
        self.mlp_output = nn.Linear(mlp_width, d_model)

    def forward(self, x):
        batch, length, width = x.shape
        head_width = width // self.num_heads
        query, key, value = (
            self.query_key_value(self.attention_norm(x))
            .view(batch, length, 3, self.num_heads, head_width)
            .permute(2, 0, 3, 1, 4)
        )
        mixed = F.scaled_dot_product_attention(query, key, value, is_causal=True)
        x = x + self.attention_output(mixed.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp_output(F.gelu(self.mlp_input(self.mlp_norm(x))))


class TransformerLanguageModel(nn.Module):
    """PyTorch twin of ``slt_jax.models.transformer`` (same function, same parameter count)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        super().__init__()
        vocab_size, d_model = arrays["token_embedding"].shape
        context_length = arrays["position_embedding"].shape[0]
        num_layers, _, num_heads, head_width = arrays["blocks.attention.query.w"].shape
        mlp_width = arrays["blocks.mlp.input.w"].shape[-1]
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(context_length, d_model)
        self.blocks = nn.ModuleList(Block(d_model, num_heads, mlp_width) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(d_model, eps=1e-5)
        self.unembedding = nn.Linear(d_model, vocab_size)
        with torch.no_grad():
            self.token_embedding.weight.copy_(torch.from_numpy(arrays["token_embedding"]))
            self.position_embedding.weight.copy_(torch.from_numpy(arrays["position_embedding"]))
            for index, block in enumerate(self.blocks):
                layer = {k[len("blocks.") :]: v[index] for k, v in arrays.items() if k.startswith("blocks.")}
                for norm_name, norm in (("attention_norm", block.attention_norm), ("mlp_norm", block.mlp_norm)):
                    norm.weight.copy_(torch.from_numpy(layer[f"{norm_name}.scale"]))
                    norm.bias.copy_(torch.from_numpy(layer[f"{norm_name}.bias"]))
                names = ("query", "key", "value")
                qkv_weight = np.concatenate(
                    [layer[f"attention.{n}.w"].reshape(d_model, num_heads * head_width) for n in names], axis=1
                )
                qkv_bias = np.concatenate([layer[f"attention.{n}.b"].reshape(-1) for n in names])
                _load_linear(block.query_key_value, qkv_weight, qkv_bias)
                _load_linear(
                    block.attention_output,
                    layer["attention.output.w"].reshape(num_heads * head_width, d_model),
                    layer["attention.output.b"],
                )
                _load_linear(block.mlp_input, layer["mlp.input.w"], layer["mlp.input.b"])
                _load_linear(block.mlp_output, layer["mlp.output.w"], layer["mlp.output.b"])
            self.final_norm.weight.copy_(torch.from_numpy(arrays["final_norm.scale"]))
            self.final_norm.bias.copy_(torch.from_numpy(arrays["final_norm.bias"]))
            _load_linear(self.unembedding, arrays["unembedding.w"], arrays["unembedding.b"])

    def forward(self, tokens):
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.position_embedding.weight[:length]
        for block in self.blocks:
            x = block(x)
        return self.unembedding(self.final_norm(x))


# --------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="zarr path for devinterp's samples (must not exist)")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="torch device for the model, the data and devinterp (cpu, cuda)")
    arguments = parser.parse_args()
    device = torch.device(arguments.device)
    if arguments.torch_threads > 0:
        torch.set_num_threads(arguments.torch_threads)

    import devinterp
    from datasets import Dataset
    from devinterp.slt.llc import llc

    import_s = time.perf_counter() - PROCESS_START
    with open(arguments.config) as file:
        config = json.load(file)
    stored = dict(np.load(config["data_path"]))
    task = config["task"]

    if task in ("dln", "mlp"):
        if task == "dln":
            model = DeepLinearNetwork([stored["w0"], stored["w1"]])
        else:
            model = MultilayerPerceptron(
                [(stored[f"layer{i}.w"], stored[f"layer{i}.b"]) for i in range(config["num_layers"])]
            )
        inputs = torch.from_numpy(stored["x"]).to(device)  # loss_fn gathers rows on the device
        targets = torch.from_numpy(stored["y"]).to(device)
        n = inputs.shape[0]
        index = np.arange(n, dtype=np.int64)
        dataset = Dataset.from_dict({"input_ids": np.stack([index, index], axis=1)}).with_format("torch")

        def loss_fn(model, input_ids):
            rows = input_ids[:, 0]
            residual = model(inputs[rows]) - targets[rows]
            return 0.5 * residual.square().sum(dim=-1, keepdim=True)  # (b, 1)

        check_ids = torch.from_numpy(np.stack([index, index], axis=1)[: config["check_examples"]])
    elif task == "transformer":
        model = TransformerLanguageModel({k[len("param.") :]: v for k, v in stored.items() if k.startswith("param.")})
        tokens = stored["tokens"].astype(np.int64)
        dataset = Dataset.from_dict({"input_ids": tokens}).with_format("torch")

        def loss_fn(model, input_ids):
            logits = model(input_ids[:, :-1])
            targets = input_ids[:, 1:]
            return F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
            ).view(targets.shape)  # (b, T)

        check_ids = torch.from_numpy(tokens[: config["check_examples"]])
    else:
        raise SystemExit(f"unknown task {task!r}")

    num_parameters = sum(p.numel() for p in model.parameters())
    model.to(device)
    with torch.no_grad():
        check_loss = float(loss_fn(model, check_ids.to(device)).double().mean())
    loss_difference = abs(check_loss - config["reference_loss"])
    if loss_difference > config["loss_tolerance"]:
        raise SystemExit(
            f"PyTorch loss at w* {check_loss!r} differs from the JAX loss {config['reference_loss']!r} "
            f"by {loss_difference:.3g} > {config['loss_tolerance']}: the two models are not the same"
        )
    setup_s = time.perf_counter() - PROCESS_START - import_s

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = llc(
            model,
            dataset,
            observables={},
            lr=config["step_size"],
            n_beta=config["nbeta"],
            localization=config["localization"],
            num_chains=config["num_chains"],
            num_draws=config["num_draws"],
            num_burnin_steps=config["num_burnin"],
            batch_size=config["batch_size"],
            num_init_loss_batches=config["devinterp_init_loss_batches"],
            init_seed=arguments.seed,
            output_path=arguments.output,
            loss_fn=loss_fn,
            device=arguments.device,
        )
        loss_trace = np.asarray(result["loss_trace"].values, dtype=np.float64)  # (chain, step)
        llc_mean = float(result["llc_mean"].values)
        llc_per_chain = np.asarray(result["llc_per_chain"].values, dtype=np.float64)
        init_loss = float(result["init_loss"].values)
    if device.type == "cuda":
        torch.cuda.synchronize()
    sampling_s = time.perf_counter() - start

    chain_steps = config["num_chains"] * (config["num_burnin"] + config["num_draws"])
    print(
        "RESULT "
        + json.dumps(
            {
                "side": "devinterp",
                "task": task,
                "devinterp_version": getattr(devinterp, "__version__", None) or _version("devinterp"),
                "torch_version": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "num_parameters": num_parameters,
                "import_s": import_s,
                "setup_s": setup_s,
                "loss_at_center": check_loss,
                "loss_at_center_difference": loss_difference,
                "sampling_s": sampling_s,
                "chain_steps_per_s": chain_steps / sampling_s,
                "init_loss": init_loss,
                "llc_mean": llc_mean,
                "llc_per_chain": llc_per_chain.tolist(),
                "loss_trace": loss_trace.tolist(),
                "in_process_s": time.perf_counter() - PROCESS_START,
                **({"device": arguments.device} if device.type != "cpu" else {}),
            }
        )
    )
    sys.stdout.flush()


def _version(name):
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
