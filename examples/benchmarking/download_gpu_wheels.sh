#!/usr/bin/env bash
# Wheels a lent GPU machine needs beside its own packages, downloaded here (it reaches no package registry):
# transformers, huggingface_hub, datasets and what they need at the versions this environment tests with (its
# image had transformers 5.17, huggingface_hub 1.33 and no datasets; BENCHMARKS.md, "Command for a GPU machine").
#
#   bash examples/benchmarking/download_gpu_wheels.sh [OUT]      # OUT defaults to .gpu_wheels (git-ignored)
#
# GPU_PYTHON (default 3.12) is the machine's Python version: the compiled wheels (regex, kernels) are built for it.
set -euo pipefail
out=${1:-.gpu_wheels}
python=${PYTHON:-python}
packages=(transformers huggingface_hub httpx2 httpcore2 kernels tomlkit truststore regex click idna anyio h11 hf-xet
    fsspec datasets dill multiprocess)
pins=$("$python" - "${packages[@]}" <<'PY'
import sys
from importlib.metadata import version

print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
PY
)
mkdir -p "$out"
# shellcheck disable=SC2086  # one argument per pin
"$python" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
    --python-version "${GPU_PYTHON:-3.12}" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --dest "$out" $pins
echo "$out: $(ls "$out" | wc -l) wheels, $(du -sh "$out" | cut -f1) ($pins)"
