#!/bin/bash
# Device machine, after setup_and_kernels.sh in the same call (issue 14): which OpenMP runtime(s) the process has.
# fm_pool.c runs our products as OpenMP regions in llama.cpp's own team: that holds only when the extension and
# libggml-cpu use one libgomp. Prints the compilers, both libraries' OpenMP links and the runtimes mapped into a
# process that has loaded both.
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site FLASHMOE_CACHE=$PWD/.devkit/fmcache
export LD_LIBRARY_PATH=/tmp/site/llama_cpp/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "CC=${CC:-} CXX=${CXX:-}"; ${CC:-cc} --version | head -1
ext=$(cd /tmp && python3 -c "import flashmoe_gguf._fmext as e; print(e.__file__)")
echo "== extension $ext"; ldd "$ext" | grep -iE "omp|stdc|gcc_s" || echo "(no shared OpenMP runtime)"
nm -D --defined-only "$ext" 2>/dev/null | grep -ciE " (GOMP|omp)_" | sed 's/^/defined GOMP\/omp symbols: /'
echo "== libggml-cpu"; ldd /tmp/site/llama_cpp/lib/libggml-cpu.so | grep -iE "omp|stdc|gcc_s"
cd /tmp && python3 - <<'PY'
import llama_cpp  # noqa: F401  (libggml-cpu first, as a user's process has it)
from flashmoe_gguf import extension
extension.load()
paths = sorted({line.split()[-1] for line in open("/proc/self/maps") if "omp" in line.lower() and "/" in line})
print("OpenMP runtimes mapped:", paths)
PY
