#!/bin/bash
# Device machine, call 2 (see make_kit.sh), while call 1's machine is warm: kernels vs ggml MUL_MAT_ID (1 thread), then warm decode + 512-token prompt at 1/4/8/16 threads
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site FLASHMOE_CACHE=$PWD/.devkit/fmcache FLASHMOE_LLAMA_CPP_SRC=/tmp/llsrc
# the libraries built there carry a RUNPATH to their build folder: without this, libllama would load ggml from
# there and the extension (which binds to the copies in llama_cpp/lib) would find it 'not loaded'
export LD_LIBRARY_PATH=/tmp/site/llama_cpp/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
test -f /tmp/q3-8L.gguf || { echo "no synth model: machine was not warm"; exit 3; }
[ "${KTYPES:-}" = none ] || taskset -c 2 python3 -P tools/bench_kernels.py --types ${KTYPES:-q2_K,q3_K,q4_K,q5_K,q6_K,iq4_xs,mxfp4,q4_0,q8_0} --batches 1,32 --seconds 0.1 --repeats 3 --no-scalar --mul-mat-id > $OUT/kernels.log 2>&1
echo "kernels rc $?"; sed -n '/[Ss]ummary/,$p' $OUT/kernels.log | head -120
for t in ${THREADS:-1 4 8 16}; do
  python3 -P -m flashmoe_gguf.cli bench /tmp/q3-8L.gguf --ram none --compare stock,stock-norepack --threads $t \
    --tokens 32 --prompt-tokens 512 --report /tmp/bench-t$t --wait 0 --disk-repeats 0 --probe-pairs 0 -q > /tmp/bench-t$t.log 2>&1
  rc=$?; echo "== threads $t (rc $rc)"; [ $rc = 0 ] || tail -25 /tmp/bench-t$t.log; grep -E "ok:|/ stock|tok/s" /tmp/bench-t$t.log | grep -v extrapolated
  cp /tmp/bench-t$t/report.md $OUT/bench-t$t.md 2>/dev/null
done
echo DONE2
