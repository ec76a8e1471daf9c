#!/bin/bash
# Device machine, after setup_and_kernels.sh in the same call (issue 14): one warm decode step's time between
# flashmoe's backend and the CPU splits (tools/step_timeline.py), against stock's step time, at THREADS.
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site FLASHMOE_CACHE=$PWD/.devkit/fmcache FLASHMOE_LLAMA_CPP_SRC=/tmp/llsrc
export LD_LIBRARY_PATH=/tmp/site/llama_cpp/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
test -f /tmp/q3-8L.gguf || { echo "no synth model: machine was not warm"; exit 3; }
OUT=${OUT:-/tmp/tl-out}; mkdir -p $OUT
uname -r; cat /sys/kernel/mm/transparent_hugepage/enabled; lscpu | grep -E "^(Thread|Core|Socket|NUMA|Model name|L3)"
st() { python3 -P tools/step_timeline.py /tmp/q3-8L.gguf --steps ${STEPS:-24} "$@" 2>&1 | grep -v "^llama_context\|^ggml" ; }
for t in ${THREADS:-4 16}; do
  echo "===== threads $t"
  st --threads $t --stock repack
  st --threads $t --stock norepack
  st --threads $t > $OUT/tl-t$t-fm.txt; grep -E "^(threads|step|during|memory)|end:" $OUT/tl-t$t-fm.txt
  st --threads $t --resident-repack > $OUT/tl-t$t-rr.txt; grep -E "^(threads|step|during|memory)|end:" $OUT/tl-t$t-rr.txt
  st --threads $t --resident-repack --expert-block 1 > $OUT/tl-t$t-rrb.txt; grep -E "^(threads|step|during|memory)|end:" $OUT/tl-t$t-rrb.txt
  st --threads $t --stock repack
  # huge pages for the resident weights (hugepages.py): paired A/B in one process, with and without resident repack
  python3 -P tools/paired_steps.py /tmp/q3-8L.gguf --env FLASHMOE_HUGEPAGES=0,1 --threads $t --resident-repack 2>&1 | grep -v "^llama_context\|^ggml"
  python3 -P tools/paired_steps.py /tmp/q3-8L.gguf --env FLASHMOE_HUGEPAGES=0,1 --threads $t 2>&1 | grep -v "^llama_context\|^ggml"
done
head -30 $OUT/tl-t${THREADS%% *}-rr.txt
echo DONE-TL
