#!/usr/bin/env bash
# The GPU report on a machine without network (DEVELOPERS.md, "The GPU report"). From the repository root:
#
#   bash benchmarks/gpu_device.sh split   # here: .ortgpu/onnxruntime_gpu-*.whl -> .ortgpu1/ ... (60 MiB parts)
#   bash benchmarks/gpu_device.sh parts   # there: which parts have arrived
#   bash benchmarks/gpu_device.sh run     # there: join, check, install, CUDA libraries, benchmarks/gpu.py
#
# `run` joins the parts, checks the wheel's SHA-256, installs it with pip into $ORTGPU_SITE (never over the
# machine's own onnxruntime), puts the CUDA 13 / cuDNN 9 libraries of the machine's nvidia-* Python
# packages on the loader path, and runs benchmarks/gpu.py from the source tree (PYTHONPATH) with the
# pre-exported graphs in .ortgpu-models/ when they are there. Results go to $OUT (default benchmarks/results).
set -euo pipefail

PYTHON=${PYTHON:-python3}
SITE=${ORTGPU_SITE:-/tmp/ortgpu-site}
RESULTS=${OUT:-benchmarks/results}
PART_SIZE=${PART_SIZE:-60M}

parts() {  # the carried parts, in order
    local i f
    for i in 0 1 2 3 4 5 6 7 8 9; do
        for f in .ortgpu[0-9]*/*.whl.part"$i"; do
            if [ -e "$f" ]; then echo "$f"; fi
        done
    done
}

case "${1:-}" in
split)
    whl=$(ls .ortgpu/onnxruntime_gpu-*.whl | head -n 1)
    name=$(basename "$whl")
    rm -rf .ortgpu[0-9]*/
    tmp=$(mktemp -d)
    split -b "$PART_SIZE" -d -a 1 "$whl" "$tmp/$name.part"
    n=0
    for f in "$tmp"/*.part*; do
        n=$((n + 1))
        mkdir -p ".ortgpu$n"
        mv "$f" ".ortgpu$n/"
    done
    rmdir "$tmp"
    (cd .ortgpu && sha256sum "$name") > .ortgpu1/SHA256
    echo "$n" > .ortgpu1/PARTS
    ls -l .ortgpu[0-9]*/
    echo "carry .ortgpu1 ... .ortgpu$n, one per device call (the last one with .ortgpu-models)"
    ;;
parts)
    expected=$(cat .ortgpu1/PARTS 2>/dev/null || echo "?")
    echo "parts here: $(parts | wc -l) of $expected"
    parts | xargs -r ls -l
    ;;
run)
    shift
    expected=$(cat .ortgpu1/PARTS)
    have=$(parts | wc -l)
    if [ "$have" != "$expected" ]; then
        echo "only $have of $expected parts are here: carry the missing .ortgpuN folders first" >&2
        parts >&2
        exit 3
    fi
    name=$(awk '{print $2}' .ortgpu1/SHA256)
    mkdir -p .ortgpu
    parts | xargs cat > ".ortgpu/$name"
    (cd .ortgpu && sha256sum -c ../.ortgpu1/SHA256)
    rm -rf "$SITE"
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" ".ortgpu/$name"
    nvidia_libs=$("$PYTHON" - <<'EOF'
import glob
import os

try:
    import nvidia  # namespace package of the nvidia-* wheels (cuBLAS, cuDNN, CUDA runtime, cuRAND, cuFFT, NVRTC)

    roots = list(nvidia.__path__)
except ImportError:
    roots = []
dirs = {os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "**", "lib*.so*"), recursive=True)}
print(":".join(sorted(dirs)))
EOF
)
    export LD_LIBRARY_PATH="${nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONUNBUFFERED=1
    models=()
    if [ -d .ortgpu-models ]; then models=(--models .ortgpu-models); fi
    mkdir -p "$RESULTS"
    "$PYTHON" benchmarks/gpu.py "${models[@]}" --out "$RESULTS/gpu.md" --json "$RESULTS/gpu.json" "$@"
    ;;
*)
    echo "usage: bash benchmarks/gpu_device.sh split | parts | run [gpu.py options]" >&2
    exit 2
    ;;
esac
