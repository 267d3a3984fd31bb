r"""slt_jax versus devinterp 2.0.1: the same LLC tasks, run alternately in one session.

What is compared
----------------
Three LLC estimation tasks, each with the *same* data, the same ``w*``, the same SGLD
hyperparameters and the same numbers of chains, draws (no burn-in on either side) and batch
size:

``dln``
    A deep linear network with widths 10-10-10 (200 parameters) at a teacher of product rank
    exactly 3 (first layer Xavier-normal with its last 7 columns zeroed, second layer
    Xavier-normal; NumPy seed 0), ``x ~ U[-10, 10]^10``, ``y = teacher(x)`` without noise,
    ``n = 10,000``, batch 256, 4 chains x 2,000 steps. Loss ``½‖f(x) − y‖²`` per example.
    The true LLC is 44 (Aoyagi's formula; ``slt_jax.truth``).
``mlp``
    A ReLU MLP with widths 128-256-256-10 (101,386 parameters) at a teacher (He initialization,
    ``slt_jax.models.mlp_init``), ``x ~ N(0, I)``, ``y = teacher(x)``, ``n = 10,000``, batch
    256, 4 chains x 500 steps (default). Loss ``½‖f(x) − y‖²``.
``transformer``
    A decoder-only transformer language model (``slt_jax.models.transformer``: vocabulary
    512, context 64, ``d_model`` 128, 4 layers, 4 heads, 933,120 parameters) at a teacher
    whose unembedding is scaled by 10 (so its next-token entropy is about 4 nats instead of
    ``log 512``), ``n`` sequences of 65 tokens *sampled from the teacher*
    (``transformer_generate``), so ``w*`` minimizes the population loss; per-token
    cross-entropy, shape ``(b, T)`` on the slt_jax side; batch 32, 4 chains. The PyTorch twin
    (``nn.Linear``, ``nn.LayerNorm``, ``F.scaled_dot_product_attention``) is loaded with the
    JAX weights and its loss at ``w*`` must match the JAX loss to 1e-4 before sampling.
    ``n = 1024`` sequences and 4 chains x 50 steps by default (not ~200): one chain-step costs
    about 0.12 s on either side on an idle 2-core machine (0.2-0.6 s when other processes
    compete), the slt_jax process samples twice and devinterp runs with two thread settings
    (below), so 200 steps would not fit the whole benchmark into ~15 minutes.

Hyperparameters (both sides): SGLD, step size ``ε`` (1e-6 by default, well inside the stability
bound ``4/λ_max(nβ H + γ)``: 2.6e-5 for the DLN, 1.9e-5 for the MLP and about 1.3e-5 for the
transformer, measured with ``slt_jax.calibration.top_hessian_eigenvalue``), ``nβ = n / log n``
(``n`` = number of examples, sequences for the transformer), ``γ = 1``.

Conventions checked in devinterp 2.0.1's source: ``SGMCMC.sgld`` (the default
``sampling_method="sgmcmc_sgld"`` of ``devinterp.slt.sampling.sample``) updates
``Δw = −(lr/2)·(nβ·∇L_B + γ(w − w₀)) + √lr·N(0, 1)`` where ``L_B`` is the mean of the
per-token losses returned by ``loss_fn`` over the batch and positions: that is docs/mathematics.md's SGLD
with ``ε = lr``, the same ``nβ`` and ``γ = localization``. ``devinterp.slt.llc.compute_llc``
computes ``nβ·(mean over every step, burn-in included, of the minibatch loss − init_loss)``;
with ``num_burnin_steps = 0`` on both sides the two estimators are the same. devinterp's
``init_loss`` is the mean over ``num_init_loss_batches`` batches: we set it to ``n // batch``,
which covers the whole data set (all but ``n mod batch`` examples); slt_jax uses
``slt.evaluate_loss`` on all data. Minibatches: slt_jax draws indices with replacement in the
scan; devinterp shuffles once and cycles through the first epoch's batches
(``itertools.cycle``), every chain seeing the same batches. Both are unbiased for ``L_n``.
Uncertainties are computed by this driver for both sides in the same way from each side's
``(chains, steps)`` loss trace: per-chain LLCs, their standard deviation, and the MCSE of the
pooled draws ``nβ(L_t − L_n(w*))`` from numpyro's effective sample size
(``slt_jax.diagnostics``).

What is timed
-------------
Every run is a fresh subprocess (``python script.py ...``), so the whole-process wall time
(``process_wall_s``, measured by the driver) includes interpreter start, imports, data loading,
compilation and sampling. Runs alternate slt_jax, devinterp, slt_jax, devinterp, ... task by
task, ``--repetitions`` times; the JAX persistent compilation cache
(``benchmarks/.jax_cache/vs_devinterp``) is emptied at the start, so the first slt_jax run
of each task compiles from scratch ("cold") and later ones load the compiled program from the
cache ("warm").

* slt_jax (``benchmarks/_slt_jax_side.py``): ``evaluate_loss`` + ``sample`` + ``llc`` is called
  once (trace + compile + run) and then again with another key; ``sampling_s`` is the second
  call, ``compile_s`` = first − second. The process therefore samples twice;
  ``single_run_wall_s`` = ``process_wall_s − sampling_s`` is what a script that estimates the
  LLC once would take (reported next to the raw process time; ``wall_time_speedup`` uses the
  raw process time, which is the conservative choice).
* devinterp (``benchmarks/_devinterp_side.py``): ``sampling_s`` is one call of
  ``devinterp.slt.llc.llc`` (init loss, the chains one after another, zarr writing, the LLC
  reduction); PyTorch runs eagerly, so there is no compile step.

PyTorch threads: every repetition runs the devinterp side twice, with ``torch.set_num_threads(1)``
and with torch's default (2 threads on this machine) (``--torch-threads 1 0``), and slt_jax is
compared with the *faster* of the two (both are reported). On an idle 2-core machine the default
is faster for the transformer (one forward+backward on a batch of 32: 0.11-0.12 s against
0.17-0.20 s), but as soon as other processes compete for the cores torch's two OpenMP threads
become 3 to 100 times *slower* than one (0.6-1.8 s for the same step; a 256x10 @ 10x10
``F.linear`` + backward: 1-16 ms against 0.1-0.3 ms). Taking the faster setting keeps the
comparison fair in both situations. JAX keeps its defaults (XLA's CPU thread pool).

``chain_steps_per_s`` = chains x steps / ``sampling_s``. Speedups are devinterp / slt_jax
medians over the repetitions. Other processes on the machine slow both sides: the 1-minute load
average before every run is recorded; compare numbers from one run of this script only.

devinterp is never a dependency of slt_jax: this script installs ``torch==2.13.0`` (a CPU
wheel) and then ``devinterp==2.0.1`` into ``benchmarks/.devinterp/.venv`` (git-ignored),
with a constraints file pinning torch so that pip cannot swap in a CUDA build, unless
``--devinterp-python PATH`` names an interpreter that already has torch and devinterp (then
nothing is installed). On a GPU machine ``--devinterp-device cuda`` runs the devinterp side
on the GPU, and the slt_jax side uses JAX's default device; the driver itself makes the data
with JAX on the CPU (``--driver-jax-platform``). ``benchmarks/gpu/run.sh`` does all of this.

How to run
----------
::

    .venv/bin/python benchmarks/vs_devinterp.py                       # 7-15 minutes on 2 cores
    .venv/bin/python benchmarks/vs_devinterp.py --quick               # smoke test, ~3 minutes
    .venv/bin/python benchmarks/vs_devinterp.py --tasks dln --repetitions 3
    bash benchmarks/gpu/run.sh                                        # on a GPU machine

Writes ``benchmarks/results/vs_devinterp.json`` (every number, per run and summarized, keyed
``<task>.<metric>``, e.g. ``dln.sampling_speedup``) and ``benchmarks/results/vs_devinterp.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

BENCHMARKS = pathlib.Path(__file__).resolve().parent
REPOSITORY = BENCHMARKS.parent
DEVINTERP_VENV = BENCHMARKS / ".devinterp" / ".venv"
JAX_CACHE = BENCHMARKS / ".jax_cache" / "vs_devinterp"
RESULTS = BENCHMARKS / "results"
TORCH_REQUIREMENT = "torch==2.13.0"
DEVINTERP_REQUIREMENT = "devinterp==2.0.1"
DEVINTERP_RUNTIME_DEPENDENCIES = [  # devinterp 2.0.1's Requires-Dist, less torch
    "datasets>=2.14.0",
    "numpy>=1.23.5",
    "pandas>=1.5.3",
    "pydantic>=2.0.0",
    "tqdm>=4.65.0",
    "transformers",
    "xarray>=2024.1.0",
    "zarr>=3.0.0",
]


# --------------------------------------------------------------------------------------------
# devinterp's virtual environment
# --------------------------------------------------------------------------------------------


def _venv_python(venv: pathlib.Path) -> pathlib.Path:
    return venv / "bin" / "python"


def _installed_versions(venv: pathlib.Path) -> dict | None:
    python = _venv_python(venv)
    if not python.exists():
        return None
    return _interpreter_versions(python)


def _interpreter_versions(python) -> dict | None:
    """torch's and devinterp's versions as seen by the interpreter ``python`` (None if absent)."""
    probe = (
        "import json, torch; from importlib.metadata import version; "
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, "
        "'devinterp': version('devinterp')}))"
    )
    completed = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if completed.returncode != 0:
        return None
    return json.loads(completed.stdout.strip().splitlines()[-1])


def ensure_devinterp_venv(venv: pathlib.Path = DEVINTERP_VENV) -> dict:
    """Create ``venv`` with torch 2.13.0 (CPU) and devinterp 2.0.1 unless it already has them."""
    versions = _installed_versions(venv)
    wanted_torch = TORCH_REQUIREMENT.split("==")[1]
    wanted_devinterp = DEVINTERP_REQUIREMENT.split("==")[1]
    if versions and versions["torch"].split("+")[0] == wanted_torch and versions["devinterp"] == wanted_devinterp:
        return {**versions, "installed_now": False, "install_s": 0.0}
    start = time.perf_counter()
    print(f"installing {TORCH_REQUIREMENT} and {DEVINTERP_REQUIREMENT} into {venv} ...", flush=True)
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    pip = [str(_venv_python(venv)), "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + [TORCH_REQUIREMENT], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write(TORCH_REQUIREMENT + "\n")  # pip may not replace the CPU torch
    try:
        completed = subprocess.run(pip + ["-c", constraints.name, DEVINTERP_REQUIREMENT])
        if completed.returncode != 0:
            print("devinterp's dependencies conflict with torch 2.13.0: installing it with --no-deps", flush=True)
            subprocess.run(pip + ["--no-deps", DEVINTERP_REQUIREMENT], check=True)
            subprocess.run(pip + ["-c", constraints.name] + DEVINTERP_RUNTIME_DEPENDENCIES, check=True)
    finally:
        os.unlink(constraints.name)
    versions = _installed_versions(venv)
    if not versions or versions["torch"].split("+")[0] != wanted_torch or versions["cuda"] is not None:
        raise RuntimeError(f"the devinterp venv does not have the CPU torch {wanted_torch}: {versions}")
    return {**versions, "installed_now": True, "install_s": time.perf_counter() - start}


def existing_devinterp_python(python: str) -> dict:
    """Check an interpreter that already has torch and devinterp (``--devinterp-python``).

    Nothing is installed: on a machine with a CUDA build of torch (and no network) point this at
    a venv that has devinterp 2.0.1 (``benchmarks/gpu/run.sh`` makes one). The path is made
    absolute but not resolved (a venv's ``bin/python`` is a link that must stay one).
    """
    python = os.path.abspath(python)
    versions = _interpreter_versions(python)
    if versions is None:
        raise RuntimeError(f"{python} cannot import torch and devinterp (see --devinterp-python)")
    wanted_devinterp = DEVINTERP_REQUIREMENT.split("==")[1]
    if versions["devinterp"] != wanted_devinterp:
        print(f"warning: {python} has devinterp {versions['devinterp']}, not {wanted_devinterp}", flush=True)
    return {**versions, "python": python, "installed_now": False, "install_s": 0.0}


# --------------------------------------------------------------------------------------------
# Tasks: data, w* and configuration, shared by both sides through /tmp
# --------------------------------------------------------------------------------------------


def _nbeta(n: int) -> float:
    return n / math.log(n)


def _run_settings(settings, n, num_draws, batch_size, eval_chunk_size):
    """The run configuration every task shares (both sides read it)."""
    return {
        "num_chains": settings.chains,
        "num_draws": num_draws,
        "num_burnin": 0,
        "batch_size": batch_size,
        "step_size": settings.step_size,
        "nbeta": _nbeta(n),
        "localization": 1.0,
        "eval_chunk_size": eval_chunk_size,
        "devinterp_init_loss_batches": n // batch_size,
        "loss_tolerance": 1e-4,
    }


def make_dln_task(data_dir: pathlib.Path, settings: argparse.Namespace) -> dict:
    """DLN 10-10-10 at a rank-3 teacher, x ~ U[-10, 10], n = 10,000."""
    widths, rank, n = (10, 10, 10), 3, 10_000
    rng = np.random.default_rng(0)
    first = rng.normal(0.0, math.sqrt(2.0 / (widths[0] + widths[1])), (widths[0], widths[1]))
    first[:, rank:] = 0.0  # only `rank` hidden units are alive: rank(W0) = 3
    second = rng.normal(0.0, math.sqrt(2.0 / (widths[1] + widths[2])), (widths[1], widths[2]))
    product = first @ second
    assert np.linalg.matrix_rank(product) == rank
    x = rng.uniform(-10.0, 10.0, (n, widths[0]))
    y = x @ product
    first, second, x, y = (a.astype(np.float32) for a in (first, second, x, y))
    path = data_dir / "dln.npz"
    np.savez(path, w0=first, w1=second, x=x, y=y)

    import slt_jax as slt

    check = settings.check_examples
    reference = float(np.mean(np.asarray(slt.models.dln_loss([first, second], (x[:check], y[:check])), dtype=np.float64)))
    return {
        "task": "dln",
        "flops_per_chain_step": flops_per_chain_step("dln", widths[0] * widths[1] + widths[1] * widths[2], 256),
        "description": f"DLN {'-'.join(map(str, widths))}, teacher of rank {rank}, n={n}",
        "data_path": str(path),
        "widths": widths,
        "rank": rank,
        "true_llc": float(slt.truth.deep_linear_network(widths, rank)),
        "n": n,
        "num_parameters": widths[0] * widths[1] + widths[1] * widths[2],
        "check_examples": check,
        "reference_loss": reference,
        **_run_settings(settings, n, settings.dln_steps, batch_size=256, eval_chunk_size=4096),
    }


def make_mlp_task(data_dir: pathlib.Path, settings: argparse.Namespace) -> dict:
    """ReLU MLP 128-256-256-10 at a teacher, x ~ N(0, I), n = 10,000."""
    import jax

    import slt_jax as slt

    widths, n = (128, 256, 256, 10), 10_000
    teacher = slt.models.mlp_init(jax.random.key(1), widths)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, widths[0])).astype(np.float32)
    y = np.asarray(slt.models.mlp_apply(teacher, x), dtype=np.float32)
    arrays = {"x": x, "y": y}
    for index, layer in enumerate(teacher):
        arrays[f"layer{index}.w"] = np.asarray(layer["w"])
        arrays[f"layer{index}.b"] = np.asarray(layer["b"])
    path = data_dir / "mlp.npz"
    np.savez(path, **arrays)
    check = settings.check_examples
    reference = float(np.mean(np.asarray(slt.models.mlp_loss(teacher, (x[:check], y[:check])), dtype=np.float64)))
    return {
        "task": "mlp",
        "flops_per_chain_step": flops_per_chain_step("mlp", slt.models.count_parameters(teacher), 256),
        "description": f"ReLU MLP {'-'.join(map(str, widths))} regression at a teacher, n={n}",
        "data_path": str(path),
        "widths": widths,
        "num_layers": len(widths) - 1,
        "n": n,
        "num_parameters": slt.models.count_parameters(teacher),
        "check_examples": check,
        "reference_loss": reference,
        **_run_settings(settings, n, settings.mlp_steps, batch_size=256, eval_chunk_size=4096),
    }


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = np.asarray(value)
    return flat


def make_transformer_task(data_dir: pathlib.Path, settings: argparse.Namespace) -> dict:
    """~1M-parameter transformer LM at a teacher, n sequences sampled from the teacher."""
    import jax

    import slt_jax as slt
    from slt_jax.models import transformer_generate, transformer_init, transformer_loss

    vocab, heads = 512, 4
    context, width, layers = (TRANSFORMER_SHAPE[k] for k in ("context", "width", "layers"))
    n, batch = settings.transformer_sequences, 32
    path = data_dir / f"transformer_n{n}.npz"
    params = transformer_init(jax.random.key(2), vocab, context, width, layers, heads)
    params["unembedding"] = {"w": 10.0 * params["unembedding"]["w"], "b": params["unembedding"]["b"]}
    if path.exists():  # sampling the teacher's sequences is deterministic and takes a while
        tokens = np.load(path)["tokens"]
    else:
        start = time.perf_counter()
        tokens = np.asarray(transformer_generate(params, jax.random.key(3), n), dtype=np.int32)
        print(f"  sampled {n} sequences from the teacher in {time.perf_counter() - start:.1f} s", flush=True)
        np.savez(path, tokens=tokens, **{f"param.{k}": v for k, v in _flatten(params).items()})
    check = settings.check_examples_transformer
    reference = float(np.mean(np.asarray(transformer_loss(params, tokens[:check]), dtype=np.float64)))
    return {
        "task": "transformer",
        "flops_per_chain_step": flops_per_chain_step("transformer", slt.models.count_parameters(params), batch),
        "description": (
            f"transformer LM (vocab {vocab}, context {context}, d_model {width}, {layers} layers, "
            f"{heads} heads) at a teacher, n={n} sequences sampled from it"
        ),
        "data_path": str(path),
        "n": n,
        "num_parameters": slt.models.count_parameters(params),
        "check_examples": check,
        "reference_loss": reference,
        **_run_settings(settings, n, settings.transformer_steps, batch_size=batch, eval_chunk_size=128),
    }


TRANSFORMER_SHAPE = {"context": 64, "width": 128, "layers": 4}


def flops_per_chain_step(task: str, num_parameters: int, batch_size: int) -> float:
    """Approximate FLOPs of one forward + backward pass on a minibatch: 6 per parameter per
    example (per token for the transformer), plus the transformer's attention products
    (4 b T² d per layer forward, three times that with the backward pass)."""
    if task == "transformer":
        context, width, layers = (TRANSFORMER_SHAPE[k] for k in ("context", "width", "layers"))
        return 6 * num_parameters * batch_size * context + 3 * 4 * batch_size * context**2 * width * layers
    return 6 * num_parameters * batch_size


TASKS = {"dln": make_dln_task, "mlp": make_mlp_task, "transformer": make_transformer_task}


# --------------------------------------------------------------------------------------------
# Running the two sides
# --------------------------------------------------------------------------------------------


def _run(command: list[str], log_path: pathlib.Path, timeout: float) -> tuple[dict, float]:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    completed = subprocess.run(
        command, cwd=REPOSITORY, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wall = time.perf_counter() - start
    log_path.write_text(completed.stdout + "\n--- stderr ---\n" + completed.stderr)
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({completed.returncode}); see {log_path}:\n{completed.stderr[-3000:]}"
        )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{' '.join(command)} printed no RESULT line; see {log_path}")
    result = json.loads(lines[-1][len("RESULT ") :])
    result["process_wall_s"] = wall
    result["load_average_before"] = load
    return result, wall


def run_slt_jax(config_path, seed, log_path, timeout):
    command = [sys.executable, str(BENCHMARKS / "_slt_jax_side.py"), "--config", str(config_path),
               "--seed", str(seed), "--cache-dir", str(JAX_CACHE)]
    result, _ = _run(command, log_path, timeout)
    result["single_run_wall_s"] = result["process_wall_s"] - result["sampling_s"]
    return result


def run_devinterp(config_path, seed, log_path, timeout, work_dir, torch_threads, python=None, device="cpu"):
    """One devinterp run with ``python`` (default: the venv's) on the torch ``device``."""
    output = pathlib.Path(tempfile.mkdtemp(dir=work_dir)) / "samples.zarr"
    python = python or _venv_python(DEVINTERP_VENV)
    command = [str(python), str(BENCHMARKS / "_devinterp_side.py"),
               "--config", str(config_path), "--seed", str(seed), "--output", str(output),
               "--torch-threads", str(torch_threads)]
    if device != "cpu":
        command += ["--device", device]
    try:
        result, _ = _run(command, log_path, timeout)
    finally:
        shutil.rmtree(output.parent, ignore_errors=True)
    result["single_run_wall_s"] = result["process_wall_s"]
    return result


# --------------------------------------------------------------------------------------------
# Statistics (the same for both sides) and the report
# --------------------------------------------------------------------------------------------


def llc_statistics(loss_trace, init_loss, nbeta) -> dict:
    from slt_jax import diagnostics

    losses = np.asarray(loss_trace, dtype=np.float64)
    draws = nbeta * (losses - init_loss)
    finite = np.all(np.isfinite(draws), axis=1)
    kept = draws[finite]
    per_chain = kept.mean(axis=1)
    return {
        "llc": float(per_chain.mean()) if kept.size else float("nan"),
        "llc_per_chain": draws.mean(axis=1).tolist(),
        "llc_std_over_chains": float(per_chain.std(ddof=1)) if per_chain.size > 1 else 0.0,
        "llc_mcse": diagnostics.monte_carlo_standard_error(kept) if kept.size else float("nan"),
        "ess": diagnostics.effective_sample_size(kept) if kept.size else float("nan"),
        "rhat": diagnostics.split_rhat(kept) if kept.shape[0] > 1 else float("nan"),
        "diverged_chains": np.flatnonzero(~finite).tolist(),
        "final_loss_mean": float(np.nanmean(losses[:, -max(1, losses.shape[1] // 10) :])),
    }


def _median(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else float("nan")


def _side_summary(side: str, side_runs: list, config: dict) -> dict:
    for run in side_runs:
        if "loss_trace" in run:
            run.update(llc_statistics(run.pop("loss_trace"), run["init_loss"], config["nbeta"]))
        # The side's own estimate must equal ours from its trace (same estimator, same data).
        run["reported_llc_matches_trace"] = bool(abs(run["llc_mean"] - run["llc"]) <= 1e-3 * max(1.0, abs(run["llc"])))
    estimates = [run["llc"] for run in side_runs]
    errors = [run["llc_mcse"] for run in side_runs]
    combined_error = math.sqrt(sum(e * e for e in errors)) / len(errors)
    summary = {
        "sampling_s": _median([r["sampling_s"] for r in side_runs]),
        "process_wall_s": _median([r["process_wall_s"] for r in side_runs]),
        "single_run_wall_s": _median([r["single_run_wall_s"] for r in side_runs]),
        "import_s": _median([r["import_s"] for r in side_runs]),
        "chain_steps_per_s": _median([r["chain_steps_per_s"] for r in side_runs]),
        "llc": float(np.mean(estimates)),
        "llc_mcse": combined_error,
        "llc_std_over_chains": _median([r["llc_std_over_chains"] for r in side_runs]),
        "llc_per_run": estimates,
        "llc_mcse_per_run": errors,
        "init_loss": side_runs[0]["init_loss"],
        "reported_llc_matches_trace": all(r["reported_llc_matches_trace"] for r in side_runs),
        "num_parameters": side_runs[0]["num_parameters"],
        "load_average_before_runs": [r["load_average_before"] for r in side_runs],
    }
    summary["process_wall_s_cold"] = side_runs[0]["process_wall_s"]
    summary["process_wall_s_warm"] = (
        _median([r["process_wall_s"] for r in side_runs[1:]]) if len(side_runs) > 1 else None
    )
    if side == "slt_jax":
        summary["compile_s_cold"] = side_runs[0]["compile_s"]
        summary["compile_s_warm"] = _median([r["compile_s"] for r in side_runs[1:]]) if len(side_runs) > 1 else None
        summary["compile_s_per_run"] = [r["compile_s"] for r in side_runs]
        summary["jax_compile_s_cold"] = side_runs[0]["first_call_jax_compile_s"]
        summary["jax_compile_s_warm"] = (
            _median([r["first_call_jax_compile_s"] for r in side_runs[1:]]) if len(side_runs) > 1 else None
        )
        summary["persistent_cache_hits_per_run"] = [r["first_call_compile_events"]["cache_hits"] for r in side_runs]
    else:
        summary["compile_s_cold"] = 0.0
        summary["loss_at_center_difference"] = max(r["loss_at_center_difference"] for r in side_runs)
        summary["torch_threads"] = side_runs[0]["torch_threads"]
    return summary


def summarize(task: str, config: dict, runs: dict) -> dict:
    """Per-side medians; devinterp is represented by its fastest torch thread setting."""
    sides = {"slt_jax": _side_summary("slt_jax", runs["slt_jax"], config)}
    by_threads = {}
    for run in runs["devinterp"]:
        by_threads.setdefault(str(run.get("torch_threads_setting", run["torch_threads"])), []).append(run)
    thread_summaries = {k: _side_summary("devinterp", v, config) for k, v in by_threads.items()}
    best = min(thread_summaries, key=lambda k: thread_summaries[k]["sampling_s"])
    sides["devinterp"] = dict(thread_summaries[best])
    sides["devinterp"]["torch_threads_setting"] = best
    sides["devinterp"]["by_torch_threads"] = {
        k: {key: v[key] for key in ("torch_threads", "sampling_s", "process_wall_s", "chain_steps_per_s", "llc",
                                    "load_average_before_runs")}
        for k, v in thread_summaries.items()
    }
    slt_side, devinterp_side = sides["slt_jax"], sides["devinterp"]
    difference = slt_side["llc"] - devinterp_side["llc"]
    joint_error = math.hypot(slt_side["llc_mcse"], devinterp_side["llc_mcse"])
    z = abs(difference) / joint_error if joint_error > 0 else float("inf")
    return {
        "description": config["description"],
        "settings": {k: config[k] for k in ("n", "num_chains", "num_draws", "num_burnin", "batch_size",
                                            "step_size", "nbeta", "localization")},
        "num_parameters": config["num_parameters"],
        "flops_per_chain_step": config.get("flops_per_chain_step"),
        "true_llc": config.get("true_llc"),
        "slt_jax": slt_side,
        "devinterp": devinterp_side,
        "sampling_speedup": devinterp_side["sampling_s"] / slt_side["sampling_s"],
        "wall_time_speedup": devinterp_side["process_wall_s"] / slt_side["process_wall_s"],
        "wall_time_speedup_cold_cache": devinterp_side["process_wall_s_cold"] / slt_side["process_wall_s_cold"],
        "wall_time_speedup_warm_cache": (
            devinterp_side["process_wall_s_warm"] / slt_side["process_wall_s_warm"]
            if slt_side["process_wall_s_warm"] else None
        ),
        "single_run_wall_time_speedup": devinterp_side["single_run_wall_s"] / slt_side["single_run_wall_s"],
        "chain_steps_per_s_ratio": slt_side["chain_steps_per_s"] / devinterp_side["chain_steps_per_s"],
        "llc_difference": difference,
        "llc_difference_z": z,
        "llc_agree": bool(z < 3.0),
        "runs": runs,
    }


GOALS = [("dln", "sampling_speedup", 20.0), ("transformer", "sampling_speedup", 5.0), ("dln", "wall_time_speedup", 5.0)]


def markdown_report(results: dict) -> str:
    lines = ["# slt_jax vs devinterp 2.0.1", ""]
    meta = results["meta"]
    lines.append(
        f"Machine: {meta['machine']['processor'] or meta['machine']['platform']}, {meta['machine']['cpu_count']} CPUs; "
        f"JAX {meta['versions']['jax']}, torch {meta['versions']['torch']}, "
        f"devinterp {meta['versions']['devinterp']}. "
        f"{meta['repetitions']} alternating repetitions per side (slt_jax, devinterp, slt_jax, devinterp, ...); "
        f"medians shown. Load average (1 min) before runs: {meta['load_average_min']:.1f} to "
        f"{meta['load_average_max']:.1f}. Total benchmark time {meta['total_s'] / 60:.1f} min."
    )
    devices = _devices_text(results)
    if devices:
        lines.append(devices)
    lines.append("")
    for task, summary in results["tasks"].items():
        lines.extend(_task_section(task, summary))
    lines.extend(_goals_and_notes(results))
    return "\n".join(lines)


def _devices_text(results: dict) -> str | None:
    """A line naming the devices, only when a side ran on an accelerator (None otherwise)."""
    jax_devices = sorted({device for summary in results["tasks"].values()
                          for run in summary["runs"]["slt_jax"] for device in run.get("devices", [])})
    devinterp_device = results["meta"].get("devinterp_device", "cpu")
    if devinterp_device == "cpu" and all("cpu" in device.lower() for device in jax_devices):
        return None
    return f"Devices: slt_jax on {', '.join(jax_devices)}; devinterp (torch) on {devinterp_device}."


def _task_section(task: str, summary: dict) -> list[str]:
    """The markdown of one task: settings, the comparison table and the LLC agreement."""
    lines = []
    s, d, settings = summary["slt_jax"], summary["devinterp"], summary["settings"]
    lines.append(f"## {task}: {summary['description']}")
    lines.append("")
    lines.append(
        f"{summary['num_parameters']:,} parameters; {settings['num_chains']} chains x {settings['num_draws']} steps "
        f"(no burn-in), batch {settings['batch_size']}, SGLD ε={settings['step_size']:g}, "
        f"nβ={settings['nbeta']:.2f}, γ={settings['localization']:g}."
    )
    lines.append("")
    lines.extend(_comparison_table(task, summary))
    lines.append("")
    threads_text = "; ".join(
        f"{v['torch_threads']} thread(s): sampling {v['sampling_s']:.3f} s, process {v['process_wall_s']:.2f} s"
        for v in d.get("by_torch_threads", {}).values()
    )
    if threads_text:
        lines.append(f"devinterp by torch thread count ({d['torch_threads']} used above, the faster): {threads_text}.")
    agree = "agree" if summary["llc_agree"] else "DO NOT agree"
    lines.append(
        f"LLC estimates {agree} (|difference| / combined MCSE = {summary['llc_difference_z']:.2f}; per run: "
        f"slt_jax {', '.join(f'{v:.3f}' for v in s['llc_per_run'])}; devinterp {', '.join(f'{v:.3f}' for v in d['llc_per_run'])})."
    )
    if summary.get("true_llc") is not None:
        lines.append(f"True LLC (Aoyagi): {summary['true_llc']:g}.")
    if task == "transformer":
        lines.append(f"PyTorch vs JAX loss at w*: |difference| = {d['loss_at_center_difference']:.2e}.")
    lines.append("")
    return lines


def _comparison_table(task: str, summary: dict) -> list[str]:
    """The slt_jax | devinterp table of one task."""

    def text(value, digits=2):
        return f"{value:.{digits}f}" if value is not None else "n/a"

    s, d, settings = summary["slt_jax"], summary["devinterp"], summary["settings"]
    lines = []
    lines.append("| | slt_jax | devinterp | devinterp / slt_jax |")
    lines.append("|---|---:|---:|---:|")
    lines.append(f"| sampling time (s, compile excluded) | {s['sampling_s']:.3f} | {d['sampling_s']:.3f} | **{summary['sampling_speedup']:.1f}x** |")
    lines.append(f"| chain-steps per second | {s['chain_steps_per_s']:.0f} | {d['chain_steps_per_s']:.0f} | {summary['chain_steps_per_s_ratio']:.1f}x |")
    lines.append(
        f"| compile time, cold cache (s): first − second call; JAX trace+lower+compile | "
        f"{s['compile_s_cold']:.2f}; {s['jax_compile_s_cold']:.2f} | 0 (eager) | |"
    )
    lines.append(
        f"| compile time, warm persistent cache (s): first − second call; JAX trace+lower+cache load | "
        f"{text(s['compile_s_warm'])}; {text(s['jax_compile_s_warm'])} | 0 (eager) | |"
    )
    lines.append(f"| import time (s) | {s['import_s']:.2f} | {d['import_s']:.2f} | |")
    lines.append(f"| whole-process wall time (s) | {s['process_wall_s']:.2f} | {d['process_wall_s']:.2f} | **{summary['wall_time_speedup']:.1f}x** |")
    if summary["wall_time_speedup_warm_cache"] is not None:
        lines.append(
            f"| whole-process wall time, cold / warm JAX cache (s) | {s['process_wall_s_cold']:.2f} / "
            f"{s['process_wall_s_warm']:.2f} | {d['process_wall_s_cold']:.2f} / {d['process_wall_s_warm']:.2f} | "
            f"{summary['wall_time_speedup_cold_cache']:.1f}x / {summary['wall_time_speedup_warm_cache']:.1f}x |"
        )
    lines.append(f"| wall time of a process estimating once (s) | {s['single_run_wall_s']:.2f} | {d['single_run_wall_s']:.2f} | {summary['single_run_wall_time_speedup']:.1f}x |")
    flops = summary.get("flops_per_chain_step") or flops_per_chain_step(
        task, summary["num_parameters"], settings["batch_size"]
    )
    if flops:
        lines.append(
            f"| ≈ GFLOP/s in the gradients ({flops / 1e9:.3g} GFLOP per chain-step) | "
            f"{flops * s['chain_steps_per_s'] / 1e9:.1f} | {flops * d['chain_steps_per_s'] / 1e9:.1f} | |"
        )
    lines.append(f"| LLC ± MCSE | {s['llc']:.3f} ± {s['llc_mcse']:.3f} | {d['llc']:.3f} ± {d['llc_mcse']:.3f} | z = {summary['llc_difference_z']:.2f} |")
    lines.append(f"| std of per-chain LLCs | {s['llc_std_over_chains']:.3f} | {d['llc_std_over_chains']:.3f} | |")
    lines.append(f"| L_n(w*) used | {s['init_loss']:.6g} | {d['init_loss']:.6g} | |")
    return lines


def _goals_and_notes(results: dict) -> list[str]:
    lines = []
    lines.append("## Goals")
    lines.append("")
    for task, key, goal in GOALS:
        if task in results["tasks"]:
            value = results["tasks"][task][key]
            lines.append(f"- {task}.{key} >= {goal:g}: {value:.2f}x — {'met' if value >= goal else 'NOT met'}")
    lines.append("")
    if results.get("notes"):
        lines.append("## Notes")
        lines.append("")
        lines.extend(f"- {note}" for note in results["notes"])
        lines.append("")
    return lines


def parse_arguments(argv=None) -> argparse.Namespace:
    """The command line; ``--quick`` sets one repetition and few steps."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--dln-steps", type=int, default=2000)
    parser.add_argument("--mlp-steps", type=int, default=500)
    parser.add_argument("--transformer-steps", type=int, default=50)
    parser.add_argument("--transformer-sequences", type=int, default=1024)
    parser.add_argument("--step-size", type=float, default=1e-6)
    parser.add_argument(
        "--torch-threads", type=int, nargs="+", default=[1, 0],
        help="torch.set_num_threads settings for the devinterp side, each run every repetition "
        "(0: torch's default, 2 here); the fastest is compared (see the docstring)",
    )
    parser.add_argument("--check-examples", type=int, default=1000)
    parser.add_argument("--check-examples-transformer", type=int, default=64)
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "slt_vs_devinterp"))
    parser.add_argument("--keep-cache", action="store_true", help="do not empty the JAX cache first")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per subprocess")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 repetition, few steps")
    parser.add_argument("--output", default=str(RESULTS / "vs_devinterp.json"))
    parser.add_argument("--note", action="append", default=[], help="a note to add to the report")
    parser.add_argument("--report-only", action="store_true", help="re-render the markdown from --output's JSON")
    parser.add_argument(
        "--devinterp-python", default=None, metavar="PATH",
        help="run the devinterp side with this interpreter (it must import torch and devinterp) "
        f"instead of creating {DEVINTERP_VENV.relative_to(REPOSITORY)} with a CPU torch",
    )
    parser.add_argument(
        "--devinterp-device", default="cpu",
        help="torch device of the devinterp side, e.g. cuda (default cpu); the slt_jax side uses "
        "JAX's default device (set JAX_PLATFORMS to choose)",
    )
    parser.add_argument(
        "--driver-jax-platform", default="cpu",
        help="JAX platform of this driver process, which only makes the tasks' data (default cpu, "
        "so that on a GPU machine the driver holds no GPU memory while the two sides run)",
    )
    settings = parser.parse_args(argv)
    if settings.quick:
        settings.repetitions = 1
        settings.dln_steps, settings.mlp_steps, settings.transformer_steps = 200, 50, 5
    return settings


def rerender_report(settings: argparse.Namespace) -> None:
    """``--report-only``: write the markdown again from the JSON (adding ``--note``s)."""
    output = pathlib.Path(settings.output)
    results = json.loads(output.read_text())
    if settings.note:
        results["notes"] = settings.note
        output.write_text(json.dumps(results, indent=1))
    output.with_suffix(".md").write_text(markdown_report(results))
    print(markdown_report(results))


def prepare_tasks(settings: argparse.Namespace, data_dir: pathlib.Path) -> dict:
    """Data, ``w*`` and configuration of every task, written to ``data_dir``.

    Returns ``{task: (config, config_path)}``. Empties the JAX cache unless ``--keep-cache``.
    """
    import jax

    jax.config.update("jax_platforms", settings.driver_jax_platform)
    data_dir.mkdir(parents=True, exist_ok=True)
    if not settings.keep_cache and JAX_CACHE.exists():
        shutil.rmtree(JAX_CACHE)
    JAX_CACHE.mkdir(parents=True, exist_ok=True)
    configs = {}
    for task in settings.tasks:
        print(f"preparing {task} ...", flush=True)
        config = TASKS[task](data_dir, settings)
        config_path = data_dir / f"{task}.json"
        config_path.write_text(json.dumps(config, indent=1))
        configs[task] = (config, config_path)
    return configs


def _run_side(side, threads, task, repetition, config_path, seed, data_dir, settings) -> dict:
    """One subprocess: the slt_jax side, or the devinterp side with ``threads`` torch threads."""
    logs = data_dir / "logs"
    if side == "slt_jax":
        log_path = logs / f"{task}_{side}_{repetition}.log"
        result = run_slt_jax(config_path, seed, log_path, settings.timeout)
    else:
        log_path = logs / f"{task}_{side}_threads{threads}_{repetition}.log"
        result = run_devinterp(config_path, seed, log_path, settings.timeout, data_dir, threads,
                               python=settings.devinterp_python, device=settings.devinterp_device)
        result["torch_threads_setting"] = threads
    result["repetition"] = repetition
    return result


def _print_run(result: dict, side: str, threads, task: str, repetition: int, repetitions: int) -> None:
    label = side if threads is None else f"devinterp/{result['torch_threads']}t"
    print(
        f"[{repetition + 1}/{repetitions}] {task:11s} {label:12s} sampling {result['sampling_s']:8.3f} s"
        f"  process {result['process_wall_s']:7.2f} s"
        + (f"  compile {result['compile_s']:6.2f} s" if side == "slt_jax" else "")
        + f"  LLC {result['llc_mean']:9.3f}  load {result['load_average_before']:.1f}",
        flush=True,
    )


def run_alternately(settings: argparse.Namespace, configs: dict, data_dir: pathlib.Path) -> tuple[dict, list]:
    """Per repetition, per task: slt_jax, then devinterp at each torch thread setting.

    Returns the runs ``{task: {side: [result, ...]}}`` and the load averages before each run.
    """
    (data_dir / "logs").mkdir(exist_ok=True)
    runs = {task: {"slt_jax": [], "devinterp": []} for task in settings.tasks}
    loads = []
    for repetition in range(settings.repetitions):
        for task in settings.tasks:
            config, config_path = configs[task]
            seed = 1000 * repetition + 17
            sides = [("slt_jax", None)] + [("devinterp", threads) for threads in settings.torch_threads]
            for side, threads in sides:
                result = _run_side(side, threads, task, repetition, config_path, seed, data_dir, settings)
                loads.append(result["load_average_before"])
                runs[task][side].append(result)
                _print_run(result, side, threads, task, repetition, settings.repetitions)
    return runs, loads


def _meta(settings: argparse.Namespace, installed: dict, loads: list) -> dict:
    import jax

    meta = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count()},
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "torch": installed["torch"],
            "devinterp": installed["devinterp"],
        },
        "devinterp_venv": installed.get("python") or str(DEVINTERP_VENV.relative_to(REPOSITORY)),
        "devinterp_install_s": installed["install_s"],
        "repetitions": settings.repetitions,
        "torch_threads": settings.torch_threads,
        "order": "per repetition, per task: slt_jax then devinterp",
        "load_average_min": min(loads),
        "load_average_max": max(loads),
        "command": " ".join([os.path.relpath(sys.argv[0], REPOSITORY)] + sys.argv[1:]),
    }
    if settings.devinterp_device != "cpu":
        meta["devinterp_device"] = settings.devinterp_device
    return meta


def _flat_summary(tasks: dict) -> dict:
    """Flat ``"<task>.<metric>"`` keys for quick lookup."""
    flat = {}
    for task, summary in tasks.items():
        for key in ("sampling_speedup", "wall_time_speedup", "wall_time_speedup_cold_cache",
                    "wall_time_speedup_warm_cache", "single_run_wall_time_speedup",
                    "chain_steps_per_s_ratio", "llc_difference_z", "llc_agree"):
            flat[f"{task}.{key}"] = summary[key]
        for side in ("slt_jax", "devinterp"):
            for key in ("sampling_s", "process_wall_s", "chain_steps_per_s", "llc", "llc_mcse", "compile_s_cold"):
                flat[f"{task}.{side}.{key}"] = summary[side][key]
        for key in ("compile_s_warm", "jax_compile_s_cold", "jax_compile_s_warm"):
            flat[f"{task}.slt_jax.{key}"] = summary["slt_jax"][key]
    return flat


def collect_results(settings, configs, runs, loads, installed, total_start) -> dict:
    """Everything written to the JSON: meta, per-task summaries, notes, goals, flat summary."""
    results = {
        "meta": _meta(settings, installed, loads),
        "tasks": {task: summarize(task, configs[task][0], runs[task]) for task in settings.tasks},
        "notes": settings.note,
    }
    results["meta"]["total_s"] = time.perf_counter() - total_start
    results["goals"] = {
        f"{task}.{key}": {"goal": goal, "value": results["tasks"][task][key], "met": results["tasks"][task][key] >= goal}
        for task, key, goal in GOALS
        if task in results["tasks"]
    }
    results["summary"] = _flat_summary(results["tasks"])
    return results


def write_results(results: dict, output: pathlib.Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1))
    report = markdown_report(results)
    output.with_suffix(".md").write_text(report)
    print()
    print(report)
    print(f"wrote {output} and {output.with_suffix('.md')}")


def main(argv=None):
    settings = parse_arguments(argv)
    if settings.report_only:
        rerender_report(settings)
        return
    total_start = time.perf_counter()
    if settings.devinterp_python:
        installed = existing_devinterp_python(settings.devinterp_python)
        settings.devinterp_python = installed["python"]
    else:
        installed = ensure_devinterp_venv()
    print(f"devinterp venv: {installed}", flush=True)
    data_dir = pathlib.Path(settings.data_dir)
    configs = prepare_tasks(settings, data_dir)
    runs, loads = run_alternately(settings, configs, data_dir)
    results = collect_results(settings, configs, runs, loads, installed, total_start)
    write_results(results, pathlib.Path(settings.output))


if __name__ == "__main__":
    main()
