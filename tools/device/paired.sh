#!/bin/bash
# Device machine, after setup_and_kernels.sh (issue 14): warm decode steps of stock and flashmoe paired in one
# process (tools/paired_steps.py) at THREADS: stock (AMX/repack) against flashmoe with resident repack, and stock
# without repack against flashmoe.
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site FLASHMOE_CACHE=$PWD/.devkit/fmcache FLASHMOE_LLAMA_CPP_SRC=/tmp/llsrc
export LD_LIBRARY_PATH=/tmp/site/llama_cpp/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
test -f /tmp/q3-8L.gguf || { echo "no synth model: machine was not warm"; exit 3; }
for t in ${THREADS:-1 4 8 16}; do
  python3 -P tools/paired_steps.py /tmp/q3-8L.gguf --against stock --resident-repack --threads $t --steps ${STEPS:-32} 2>&1 | grep "B / A"
  python3 -P tools/paired_steps.py /tmp/q3-8L.gguf --against stock-norepack --threads $t --steps ${STEPS:-32} 2>&1 | grep "B / A"
done
echo DONE-PAIRED
