#!/usr/bin/env bash
# Build benchmarks/gpu/wheelhouse/: every wheel benchmarks/gpu/run.sh needs to install slt_jax
# and devinterp 2.0.1 on a GPU machine that has no network (it has CUDA builds of torch and JAX).
#
#   bash benchmarks/gpu/make_wheelhouse.sh          # from the repository root, with network
#
# The slt_jax wheel is built from this working tree (pip wheel --no-deps .); the others are
# listed in benchmarks/gpu/requirements.txt and downloaded without dependencies for CPython
# 3.11 and 3.12 on manylinux x86_64 (pure-Python wheels once; devinterp 2.0.1 needs zarr>=3,
# which needs Python>=3.11, so 3.10 is left out). Prints the folder's size,
# which must stay under 64 MiB (what may travel to the GPU machine with the working tree).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
WHEELHOUSE=benchmarks/gpu/wheelhouse
PYTHON_VERSIONS=${PYTHON_VERSIONS:-"3.11 3.12"}  # devinterp 2.0.1 needs zarr>=3, which needs Python>=3.11
PLATFORMS=()
for platform in manylinux1 manylinux2010 manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 \
                manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35; do
    PLATFORMS+=(--platform "${platform}_x86_64")
done

rm -rf "$WHEELHOUSE"
mkdir -p "$WHEELHOUSE"
echo "slt_jax wheel from the working tree ..."
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WHEELHOUSE" . 2>&1 | grep -v "^WARNING: Location" || true
ls "$WHEELHOUSE"/slt_jax-*.whl >/dev/null

requirements=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' benchmarks/gpu/requirements.txt | grep -v '^$')
for version in $PYTHON_VERSIONS; do
    echo "wheels for CPython $version ..."
    for requirement in $requirements; do  # one at a time: a package may be listed at several versions
        "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$WHEELHOUSE" \
            --python-version "$version" --implementation cp "${PLATFORMS[@]}" "$requirement" \
            2>&1 | grep -v "^WARNING: Location" || true
        if ! ls "$WHEELHOUSE" | grep -qi "^$(echo "${requirement%%==*}" | sed 's/[-_.]/[-_.]/g')-${requirement##*==}-"; then
            echo "error: no wheel of $requirement for CPython $version" >&2
            exit 1
        fi
    done
done

echo
ls -l "$WHEELHOUSE" | awk 'NR > 1 {printf "%9.1f KiB  %s\n", $5 / 1024, $9}'
size_kib=$(du -sk "$WHEELHOUSE" | cut -f1)
echo "wheelhouse: $(ls "$WHEELHOUSE" | wc -l) wheels, $((size_kib / 1024)) MiB ($size_kib KiB) in $WHEELHOUSE"
if [ "$size_kib" -gt $((64 * 1024)) ]; then
    echo "error: the wheelhouse is over 64 MiB" >&2
    exit 1
fi
