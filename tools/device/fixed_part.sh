#!/bin/bash
# Device machine, after setup_and_kernels.sh in the same call (issue 14): where flashmoe's warm decode loses to stock
# at 4-16 threads with llama.cpp's extra buffer types (AMX) on both. Hypothesis: thread hand-off between ggml's
# CPU splits and our expert regions (one OpenMP team; wake-ups between splits), tested by OpenMP's wait policy and
# thread binding; and the scheduler's splits of one decode step (GGML_SCHED_DEBUG) for both.
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site FLASHMOE_CACHE=$PWD/.devkit/fmcache FLASHMOE_LLAMA_CPP_SRC=/tmp/llsrc
export LD_LIBRARY_PATH=/tmp/site/llama_cpp/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
test -f /tmp/q3-8L.gguf || { echo "no synth model: machine was not warm"; exit 3; }
OUT=${OUT:-/tmp/fixed-out}; mkdir -p $OUT
lscpu | grep -E "^(Thread|Core|Socket|NUMA node\(s\)|Model name)" ; ldd /tmp/site/llama_cpp/lib/libggml-cpu.so | grep -i gomp
which perf 2>/dev/null && echo "perf available"
run() {  # name threads env...
  local name=$1 t=$2; shift 2
  env "$@" python3 -P -m flashmoe_gguf.cli bench /tmp/q3-8L.gguf --ram none --compare stock --resident-repack \
    --threads $t --tokens 48 --prompt-tokens 32 --report /tmp/fp-$name --wait 0 --disk-repeats 0 --probe-pairs 8 -q \
    > /tmp/fp-$name.log 2>&1
  echo "== $name threads $t [$*] rc $?"
  grep -E "^\| no cap" /tmp/fp-$name/report.md | awk -F'|' '{print $2, "decode", $7}' | head -2
  grep -E "^\| (flashmoe|stock)[-a-z]* K=" /tmp/fp-$name/report.md | head -2
  cp /tmp/fp-$name/report.md $OUT/fp-$name.md 2>/dev/null
}
PARTS=${PARTS:-variants splits before}  # which of the three parts to run
for t in ${THREADS:-4 16}; do
  [[ " $PARTS " == *" variants "* ]] || break
  run t$t-default $t X=1
  run t$t-active $t OMP_WAIT_POLICY=active
  run t$t-block $t FLASHMOE_EXPERT_BLOCK=1
  run t$t-bind $t OMP_PROC_BIND=close OMP_PLACES=cores
done
# one decode step's splits, flashmoe (resident repack) and stock, 4 threads
cat > /tmp/splits.py <<'PY'
import os, sys
which = sys.argv[1]
import llama_cpp
if which == "flashmoe":
    from flashmoe_gguf import Llama
    llm = Llama(model_path="/tmp/q3-8L.gguf", n_ctx=256, n_threads=4, verbose=True, resident_repack=True)
else:
    llm = llama_cpp.Llama(model_path="/tmp/q3-8L.gguf", n_ctx=256, n_threads=4, verbose=True)
llm.eval([1, 2, 3, 4])
print("==== DECODE STEP", file=sys.stderr, flush=True)
llm.eval([5])
PY
for w in flashmoe stock; do
  [[ " $PARTS " == *" splits "* ]] || break
  GGML_SCHED_DEBUG=2 python3 -P /tmp/splits.py $w > $OUT/splits-$w.log 2>&1; echo "splits $w rc $?"
  sed -n '/==== DECODE STEP/,$p' $OUT/splits-$w.log > /tmp/step-$w.log
  echo "splits in the decode step: $(grep -c '## SPLIT' /tmp/step-$w.log)"; grep -E "buffer size" $OUT/splits-$w.log | head -12
  grep -E "result_output|ffn_moe_gate-0 |attn_norm-1 " /tmp/step-$w.log | head -6
done
# the earlier all-cores runs' configuration (README, issue 14), for before/after ratios
for t in ${THREADS:-4 16}; do
  [[ " $PARTS " == *" before "* ]] || break
  python3 -P -m flashmoe_gguf.cli bench /tmp/q3-8L.gguf --ram none --compare stock,stock-norepack --threads $t --tokens 24 \
    --prompt-tokens 128 --report /tmp/b$t --wait 0 --disk-repeats 0 --probe-pairs 8 -q > /tmp/b$t.log 2>&1
  echo "== b$t rc $?"; grep -E " / stock" /tmp/b$t.log | head -6; grep -A4 "^| prompt tok/s" /tmp/b$t/report.md | head -6; cp /tmp/b$t/report.md $OUT/b$t.md 2>/dev/null
done
echo DONE-FP
