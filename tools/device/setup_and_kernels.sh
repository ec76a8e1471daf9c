#!/bin/bash
# Device machine, call 1 (see make_kit.sh): build llama.cpp natively, install llama_cpp + flashmoe into /tmp/site, kernel tests, synth model
set -e
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site FLASHMOE_CACHE=$PWD/.devkit/fmcache FLASHMOE_LLAMA_CPP_SRC=/tmp/llsrc
# the libraries built there carry a RUNPATH to their build folder: without this, libllama would load ggml from
# there and the extension (which binds to the copies in llama_cpp/lib) would find it 'not loaded'
export LD_LIBRARY_PATH=/tmp/site/llama_cpp/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
K=.devkit
python3 --version; nproc; grep -m1 "model name" /proc/cpuinfo; grep -o 'avx512[a-z_0-9]*\|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
which cmake ninja gcc cc || true
python3 -m pip list 2>/dev/null | grep -iE "^(transformers|torch|numpy|setuptools|cffi|jinja2|typing.extensions|huggingface) " || true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $K/whl/*.whl
mkdir -p /tmp/llsrc && tar xzf $K/llsrc.tgz -C /tmp/llsrc && tar xzf $K/llama_cpp_py.tgz -C /tmp/site
t0=$(date +%s)
# the system compilers: the device's default CC/CXX (/opt/gcc) link libstdc++ statically and export its symbols,
# and llama.cpp then crashes in print_info once numpy is imported first (see bench_gpu.sh)
cc=""; [ -x /usr/bin/g++ ] && cc="-DCMAKE_C_COMPILER=/usr/bin/gcc -DCMAKE_CXX_COMPILER=/usr/bin/g++"
env -u CC -u CXX cmake -S /tmp/llsrc -B /tmp/llbuild -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON $cc \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF > /tmp/cmake.log 2>&1 || { tail -30 /tmp/cmake.log; exit 1; }
cmake --build /tmp/llbuild -j16 --target llama ggml > /tmp/build.log 2>&1 || { tail -40 /tmp/build.log; exit 1; }
echo "llama.cpp built in $(( $(date +%s) - t0 )) s"; grep -iE "AMX|AVX512|x86 .*variant|GGML_NATIVE" /tmp/cmake.log | head
mkdir -p /tmp/site/llama_cpp/lib && find /tmp/llbuild -name "*.so*" -exec cp -a {} /tmp/site/llama_cpp/lib/ \;
ls /tmp/site/llama_cpp/lib
python3 -m pip install -q --no-deps --no-build-isolation --no-cache-dir --target /tmp/site . > /tmp/pipfm.log 2>&1 || { tail -30 /tmp/pipfm.log; exit 1; }
cd /tmp && python3 -c "import flashmoe_gguf, llama_cpp; from flashmoe_gguf import extension; print('fm ok', flashmoe_gguf.__file__)"; cd - >/dev/null
[ -n "${SKIP_TESTS:-}" ] || python3 -P -m pytest -q -x tests/test_kernels.py 2>&1 | tail -5
python3 -P -m flashmoe_gguf.cli synth qwen3-30b-a3b --layers 8 --experts Q4_K_M -o /tmp/q3-8L.gguf -q && ls -la /tmp/q3-8L.gguf
cat /proc/self/cgroup; mount | grep -i cgroup | head -5; df -h /tmp | tail -1
echo DONE1
