#!/usr/bin/env bash
# slt_jax vs devinterp 2.0.1 and the sampler overhead on a GPU machine, in one command.
#
#   bash benchmarks/gpu/run.sh            # from the repository root; results in $OUT
#
# Needs benchmarks/gpu/wheelhouse/ (made by benchmarks/gpu/make_wheelhouse.sh where there is
# network) and a python3 that has CUDA builds of JAX and PyTorch. Steps, each under `timeout`:
#
#   setup        venv at $VENV reusing python3's packages; slt_jax (from this working tree) and
#                devinterp 2.0.1 installed offline from the wheelhouse
#   info         nvidia-smi, JAX devices, torch.cuda, package versions -> $OUT/environment.json
#   mlp          benchmarks/vs_devinterp.py --tasks mlp          -> $OUT/vs_devinterp_mlp.{json,md}
#   transformer  benchmarks/vs_devinterp.py --tasks transformer  -> $OUT/vs_devinterp_transformer.*
#   overhead     benchmarks/sampler_overhead.py                  -> $OUT/sampler_overhead.json
#   logs         the benchmark subprocesses' logs                -> $OUT/logs.tar.gz
#
# Environment (defaults in brackets):
#   OUT [benchmarks/results/gpu]   PYTHON [python3]   VENV [/tmp/slt-gpu-venv]
#   STEPS ["setup info mlp transformer overhead logs"]   a subset runs only those steps
#   DEVINTERP_DEVICE [cuda]        torch device of the devinterp side
#   JAX_DEFAULT_MATMUL_PRECISION [highest]: float32 matrix products on both sides (JAX would
#                                  use TF32 on Hopper by default, PyTorch does not)
#   SLT_GPU_SMALL [0]              1: tiny sizes, to test this script on a CPU
#   MLP_ARGS, TRANSFORMER_ARGS, OVERHEAD_ARGS: replace the per-step benchmark options below
# See benchmarks/gpu/README.md for the expected times (about 6 of the 8 minutes allowed).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results/gpu}
PYTHON=${PYTHON:-python3}
VENV=${VENV:-/tmp/slt-gpu-venv}
STEPS=${STEPS:-"setup info mlp transformer overhead logs"}
WHEELHOUSE=benchmarks/gpu/wheelhouse
DATA_DIR=${DATA_DIR:-/tmp/slt_vs_devinterp_gpu}
export DEVINTERP_DEVICE=${DEVINTERP_DEVICE:-cuda}
export JAX_DEFAULT_MATMUL_PRECISION=${JAX_DEFAULT_MATMUL_PRECISION:-highest}
export PYTHONUNBUFFERED=1
# pip: only the wheelhouse, whatever this machine's pip configuration says
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT

if [ "${SLT_GPU_SMALL:-0}" = 1 ]; then  # seconds on a CPU: checks the plumbing, not the speed
    COMMON="--repetitions 1 --torch-threads 0 --chains 2 --timeout 300"
    MLP_ARGS=${MLP_ARGS:-"$COMMON --mlp-steps 20 --check-examples 100"}
    TRANSFORMER_ARGS=${TRANSFORMER_ARGS:-"$COMMON --transformer-steps 3 --transformer-sequences 64 --check-examples-transformer 16"}
    OVERHEAD_ARGS=${OVERHEAD_ARGS:-"--steps 20 --multi-chain-steps 5 --repeats 1 --chains 1 4"}
    TIMEOUTS=(setup=600 info=120 mlp=600 transformer=600 overhead=600 logs=60)
else
    COMMON="--repetitions 2 --torch-threads 0 --timeout 150"
    MLP_ARGS=${MLP_ARGS:-"$COMMON --mlp-steps 500"}
    TRANSFORMER_ARGS=${TRANSFORMER_ARGS:-"$COMMON --transformer-steps 200"}
    OVERHEAD_ARGS=${OVERHEAD_ARGS:-"--chains 1 8 32 128"}
    TIMEOUTS=(setup=90 info=40 mlp=110 transformer=160 overhead=55 logs=15)  # 470 s in all
fi

mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
RUN_START=$SECONDS
FAILED=()

timeout_of() {
    local entry
    for entry in "${TIMEOUTS[@]}"; do
        [ "${entry%%=*}" = "$1" ] && echo "${entry#*=}" && return
    done
    echo 60
}

step() {  # step NAME: run the function step_NAME under `timeout`, log its time and status
    local name=$1 limit start status
    limit=$(timeout_of "$name")
    start=$SECONDS
    echo
    echo "=== $name (limit ${limit} s; $((SECONDS - RUN_START)) s since start) ==="
    timeout --kill-after=5 "$limit" bash -c "step_$name"  # kills the step's whole process group
    status=$?
    echo "=== $name: exit $status after $((SECONDS - start)) s$( [ $status = 124 ] && echo ' (TIMED OUT)') ==="
    [ $status = 0 ] || FAILED+=("$name")
}

step_setup() {
    set -euo pipefail
    rm -rf "$VENV"
    # --system-site-packages reuses the preinstalled CUDA builds of JAX and PyTorch. Without pip:
    # ensurepip may be missing, and on Python < 3.12 it would also add an old setuptools that
    # shadows the image's (torch requires setuptools >= 77). pip comes from the wheelhouse.
    "$PYTHON" -m venv --without-pip --system-site-packages "$VENV"
    # If $PYTHON is itself a venv's interpreter (the GPU image's python3 is one), the new venv's
    # "system" packages are the base interpreter's, not that venv's: add its site-packages
    # (with their .pth files) after the new venv's own.
    "$PYTHON" - "$VENV" <<'PY'
import os, site, sys, sysconfig
if sys.prefix != sys.base_prefix:
    venv = sys.argv[1]
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    target = os.path.join(venv, "lib", version, "site-packages", "_parent_environment.pth")
    with open(target, "w") as file:
        for path in site.getsitepackages():
            file.write(f"import site; site.addsitedir({path!r})\n")
    print(f"{target}: adds {site.getsitepackages()}")
PY
    local python="$VENV/bin/python"
    local pip_wheel
    pip_wheel=$(ls "$WHEELHOUSE"/pip-*.whl | head -1)
    "$python" "$pip_wheel/pip" install --quiet --no-index --ignore-installed "$pip_wheel"
    "$python" -m pip --version
    echo "[setup ${SECONDS} s] venv ready; installing from $WHEELHOUSE"
    "$python" -m pip install --no-index --find-links "$WHEELHOUSE" slt_jax devinterp==2.0.1
    # This working tree's slt_jax, in case the wheelhouse's is older (hatchling from the wheelhouse).
    "$python" -m pip install --no-index --find-links "$WHEELHOUSE" --no-deps --force-reinstall . \
        || echo "warning: could not build slt_jax from this tree; using the wheelhouse's wheel"
    echo "[setup ${SECONDS} s] installed; checking the imports"
    "$python" -c "import slt_jax, datasets, zarr, xarray, pydantic; import devinterp.slt.llc; print('imports ok')"
    "$python" -m pip list 2>/dev/null | grep -i -E "^(slt.jax|devinterp|jax|jaxlib|jax-cuda|torch|numpy|numpyro|optax|datasets|zarr|xarray|pandas|pyarrow|transformers|fsspec|pydantic) "
}

step_info() {
    nvidia-smi || echo "nvidia-smi: not available"
    "$VENV/bin/python" - "$OUT/environment.json" <<'PY'
import json, os, platform, subprocess, sys
from importlib.metadata import version
import jax, torch
info = {
    "python": sys.version, "platform": platform.platform(), "cpu_count": os.cpu_count(),
    "jax": jax.__version__, "jax_backend": jax.default_backend(),
    "jax_devices": [str(d) for d in jax.devices()],
    "jax_device_kind": jax.devices()[0].device_kind,
    "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
    "torch": torch.__version__, "torch_cuda": torch.version.cuda,
    "torch_cuda_available": torch.cuda.is_available(),
    "torch_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
    "versions": {name: version(name) for name in ("slt_jax", "devinterp", "numpyro", "optax", "datasets", "zarr")},
    "environment": {k: os.environ.get(k) for k in ("JAX_PLATFORMS", "JAX_DEFAULT_MATMUL_PRECISION", "DEVINTERP_DEVICE", "XLA_FLAGS")},
}
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                         "--format=csv"], capture_output=True, text=True, timeout=20).stdout
except (OSError, subprocess.SubprocessError):
    info["nvidia_smi"] = None
print(json.dumps(info, indent=1))
open(sys.argv[1], "w").write(json.dumps(info, indent=1))
if os.environ["DEVINTERP_DEVICE"] == "cuda" and not torch.cuda.is_available():
    sys.exit("torch.cuda is not available but DEVINTERP_DEVICE=cuda")
PY
}

vs_devinterp() {  # vs_devinterp TASK ARGS...
    local task=$1; shift
    "$VENV/bin/python" benchmarks/vs_devinterp.py --tasks "$task" "$@" \
        --devinterp-python "$VENV/bin/python" --devinterp-device "$DEVINTERP_DEVICE" \
        --data-dir "$DATA_DIR" --output "$OUT/vs_devinterp_$task.json" \
        --note "run by benchmarks/gpu/run.sh; JAX_DEFAULT_MATMUL_PRECISION=$JAX_DEFAULT_MATMUL_PRECISION"
}

step_mlp() {
    # shellcheck disable=SC2086
    vs_devinterp mlp $MLP_ARGS
}

step_transformer() {
    # shellcheck disable=SC2086
    vs_devinterp transformer $TRANSFORMER_ARGS
}

step_overhead() {
    # shellcheck disable=SC2086
    "$VENV/bin/python" benchmarks/sampler_overhead.py $OVERHEAD_ARGS --output "$OUT/sampler_overhead.json"
}

step_logs() {
    tar -czf "$OUT/logs.tar.gz" -C "$DATA_DIR" logs
}

export OUT PYTHON VENV WHEELHOUSE DATA_DIR MLP_ARGS TRANSFORMER_ARGS OVERHEAD_ARGS
export -f vs_devinterp step_setup step_info step_mlp step_transformer step_overhead step_logs
for name in $STEPS; do
    step "$name"
    if [ "$name" = setup ] && [[ " ${FAILED[*]} " == *" setup "* ]]; then
        echo "setup failed: not running the benchmarks"
        break
    fi
done
echo
echo "run.sh: $((SECONDS - RUN_START)) s in all; failed steps: ${FAILED[*]:-none}; results in $OUT:"
ls -l "$OUT"
[ ${#FAILED[@]} = 0 ]
