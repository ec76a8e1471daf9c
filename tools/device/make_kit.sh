#!/bin/bash
# Builds .devkit/ (ignored by git; pass it as `carry` to the device tool) for running flashmoe on the device machine
# (no network there, Python 3.12): a trimmed llama.cpp source of the pinned sdist (11 MB, built natively there so
# ggml picks that CPU's AVX-512/AMX), llama_cpp's Python files from this machine's install, cp312 wheels of what the
# device's Python lacks, and the flashmoe cache with the vocab the synth presets need.
#   bash tools/device/make_kit.sh      then, with the device tool: bash tools/device/setup_and_kernels.sh
#   (builds, installs into /tmp/site, runs tests/test_kernels.py, synthesizes a Q4_K_M slice) and, while the
#   machine is warm, bash tools/device/bench_threads.sh (kernels vs ggml, warm decode + 512-token prompt at
#   1/4/8/16 threads against stock). Both read .devkit/ relative to the repository root.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx "/.devkit/" .git/info/exclude 2>/dev/null || echo "/.devkit/" >> .git/info/exclude
SDIST="${FLASHMOE_SDIST_DIR:-/work/deps/llama_cpp_python-0.3.36}/vendor/llama.cpp"
mkdir -p .devkit/whl
tar czf .devkit/llsrc.tgz -C "$SDIST" --exclude=./models --exclude=./docs --exclude=./.git --exclude=./tests \
    --exclude='./tools/server/public*' --exclude=./examples --exclude=./media .
SITE=$(python -c "import llama_cpp, os; print(os.path.dirname(os.path.dirname(llama_cpp.__file__)))")
# with its dist-info: flashmoe checks the installed llama-cpp-python version by its metadata
tar czf .devkit/llama_cpp_py.tgz -C "$SITE" --exclude='llama_cpp/lib' --exclude='__pycache__' llama_cpp \
    "$(cd "$SITE" && ls -d llama_cpp_python-*.dist-info)"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .devkit/whl \
    cffi==2.0.0 pycparser gguf==0.19.0 diskcache safetensors==0.8.0 tokenizers==0.23.3 pyyaml tqdm pytest==9.2.0 \
    pluggy iniconfig setuptools==80.9.0 wheel
mkdir -p .devkit/fmcache
CACHE="${FLASHMOE_CACHE:-$HOME/.cache/flashmoe-gguf}"
cp -a "$CACHE"/sdist "$CACHE"/synth-tokenizers .devkit/fmcache/ 2>/dev/null || \
    echo "note: run 'flashmoe synth qwen3-30b-a3b --layers 1 -o /tmp/x.gguf' once here first to fill $CACHE"
du -sh .devkit
