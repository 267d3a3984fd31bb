"""slt_jax side of ``benchmarks/vs_devinterp.py`` (run as a subprocess; not a library module).

Usage (the driver builds these arguments)::

    python benchmarks/_slt_jax_side.py --config /tmp/slt_vs_devinterp/dln.json --seed 0 \
        --cache-dir benchmarks/.jax_cache/vs_devinterp

Loads the task's data and ``w*`` from the ``.npz`` named in the config, then runs the LLC
pipeline twice with the same shapes and two different keys:

1. ``slt.evaluate_loss`` (``L_n(w*)`` on all data) + ``slt.sample`` + ``slt.llc``: traces,
   compiles (or loads the program from JAX's persistent compilation cache) and runs;
2. the same with another key: the timed sampling call (``sampling_s``).

``compile_s`` is the first call minus the second. It prints one JSON line (prefixed
``RESULT``) with the timings, the per-draw loss trace and the LLC of the second call.
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402


def _parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", required=True)
    return parser.parse_args()


def _unflatten(arrays, prefix_separator="."):
    """``{"a.b.c": array}`` -> nested dicts ``{"a": {"b": {"c": array}}}``."""
    tree = {}
    for name, value in arrays.items():
        node = tree
        parts = name.split(prefix_separator)
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def main():
    arguments = _parse_arguments()
    import jax

    jax.config.update("jax_compilation_cache_dir", arguments.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    import jax.numpy as jnp
    import numpy as np

    # JAX's own accounting of compilation: tracing, lowering to MLIR, and the backend compile
    # (which includes loading the executable from the persistent cache on a hit).
    compile_events = {"trace": 0.0, "lower": 0.0, "backend_compile_or_cache_load": 0.0, "cache_hits": 0}
    event_names = {
        "/jax/core/compile/jaxpr_trace_duration": "trace",
        "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
        "/jax/core/compile/backend_compile_duration": "backend_compile_or_cache_load",
    }

    def on_duration(event, duration, **kwargs):
        if event in event_names:
            compile_events[event_names[event]] += duration

    def on_event(event, **kwargs):
        if event == "/jax/compilation_cache/cache_hits":
            compile_events["cache_hits"] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)

    import slt_jax as slt

    import_s = time.perf_counter() - PROCESS_START

    with open(arguments.config) as file:
        config = json.load(file)
    stored = dict(np.load(config["data_path"]))
    task = config["task"]
    if task == "dln":
        params = [jnp.asarray(stored["w0"]), jnp.asarray(stored["w1"])]
        data = (jnp.asarray(stored["x"]), jnp.asarray(stored["y"]))
        loss_fn = slt.models.dln_loss
    elif task == "mlp":
        num_layers = config["num_layers"]
        params = [
            {"w": jnp.asarray(stored[f"layer{i}.w"]), "b": jnp.asarray(stored[f"layer{i}.b"])}
            for i in range(num_layers)
        ]
        data = (jnp.asarray(stored["x"]), jnp.asarray(stored["y"]))
        loss_fn = slt.models.mlp_loss
    elif task == "transformer":
        params = _unflatten(
            {k[len("param.") :]: jnp.asarray(v) for k, v in stored.items() if k.startswith("param.")}
        )
        data = jnp.asarray(stored["tokens"])
        loss_fn = slt.models.transformer_loss
    else:
        raise SystemExit(f"unknown task {task!r}")
    jax.block_until_ready((params, data))

    sampler = slt.samplers.sgld(
        step_size=config["step_size"], nbeta=config["nbeta"], localization=config["localization"]
    )

    def estimate(key):
        init_loss = float(slt.evaluate_loss(loss_fn, params, data, chunk_size=config["eval_chunk_size"]))
        trace = slt.sample(
            loss_fn,
            params,
            data,
            sampler,
            key=key,
            num_chains=config["num_chains"],
            num_draws=config["num_draws"],
            num_burnin=config["num_burnin"],
            batch_size=config["batch_size"],
        )
        jax.block_until_ready(trace)
        result = slt.llc(trace, nbeta=config["nbeta"], init_loss=init_loss)
        return trace, init_loss, result

    before_first_call = dict(compile_events)
    start = time.perf_counter()
    estimate(jax.random.key(arguments.seed))
    first_call_s = time.perf_counter() - start
    first_call_compile = {k: compile_events[k] - before_first_call[k] for k in compile_events}
    start = time.perf_counter()
    trace, init_loss, result = estimate(jax.random.key(arguments.seed + 1_000_003))
    sampling_s = time.perf_counter() - start

    chain_steps = config["num_chains"] * (config["num_burnin"] + config["num_draws"])
    print(
        "RESULT "
        + json.dumps(
            {
                "side": "slt_jax",
                "task": task,
                "jax_version": jax.__version__,
                "slt_jax_version": slt.__version__,
                "devices": [str(d) for d in jax.devices()],
                "num_parameters": slt.models.count_parameters(params),
                "import_s": import_s,
                "first_call_s": first_call_s,
                "sampling_s": sampling_s,
                "compile_s": max(first_call_s - sampling_s, 0.0),
                "first_call_jax_compile_s": first_call_compile["trace"]
                + first_call_compile["lower"]
                + first_call_compile["backend_compile_or_cache_load"],
                "first_call_compile_events": first_call_compile,
                "process_compile_events": compile_events,
                "chain_steps_per_s": chain_steps / sampling_s,
                "init_loss": init_loss,
                "llc_mean": result.mean,
                "llc_per_chain": np.asarray(result.per_chain).tolist(),
                "diverged_chains": list(result.diverged_chains),
                "loss_trace": np.asarray(trace.loss, dtype=np.float64).tolist(),
                "in_process_s": time.perf_counter() - PROCESS_START,
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
