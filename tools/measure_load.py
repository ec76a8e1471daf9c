"""Does loading read the routed experts? Cold page cache, load, then count what was read and what is resident.

For flashmoe and for stock llama-cpp-python, each in a fresh process after dropping the page cache (root):
the process's read_bytes (/proc/self/io), the model file's resident pages (fincore), RSS, and load time (the
Llama() construction, after the imports, as `flashmoe bench` times it; the imports' time is printed beside it).

    python tools/measure_load.py /work/synth/q3-4L.gguf [--json out.json] [--modes flashmoe]

It also reads the file's first bytes sequentially with O_DIRECT from a cold cache (as many as the non-expert
weights, at least 1 GiB): the disk's sequential bandwidth, which a load should reach for the non-expert bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WORKER = r"""
import json, os, sys, time, resource
path, mode = sys.argv[1], sys.argv[2]
t_imp = time.monotonic()
import llama_cpp
from flashmoe_gguf import Llama
t0 = time.monotonic()
if mode == "flashmoe":
    llm = Llama(model_path=path, ram_budget="256M", n_ctx=256, verbose=False)
else:
    llm = llama_cpp.Llama(model_path=path, n_ctx=256, verbose=False, use_mmap=(mode == "stock-mmap"))
load = time.monotonic() - t0
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
rss = int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) * 1024
print(json.dumps({"load_s": load, "import_s": t0 - t_imp, "read_bytes": int(io["read_bytes"]), "rchar": int(io["rchar"]), "rss": rss}))
"""


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def resident_bytes(path: Path) -> int:
    """the file's bytes in the page cache (util-linux fincore), -1 where fincore is missing"""
    import shutil
    if shutil.which("fincore") is None:
        return -1
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]) if out else 0


def measure(path: Path, mode: str) -> dict[str, float]:
    cold = drop_caches()
    res = subprocess.run([sys.executable, "-c", WORKER, str(path), mode], capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["file_resident_bytes"] = resident_bytes(path)
    out["cold"] = cold
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--modes", default="flashmoe,stock-mmap,stock-nommap",
                    help="comma-separated: flashmoe, stock-mmap, stock-nommap (default: all)")
    args = ap.parse_args()
    from flashmoe_gguf.experts import expert_tensors
    experts = sum(e.stride * e.n_expert for e in expert_tensors(args.model))
    size = args.model.stat().st_size
    print(f"{args.model}: {size / 1e9:.3f} GB, routed experts {experts / 1e9:.3f} GB, "
          f"everything else {(size - experts) / 1e9:.3f} GB")
    from flashmoe_gguf.bench.disk import sequential_cold
    seq = sequential_cold(args.model, max(size - experts, 1 << 30), drop=True)["gb_s"] * 1e9
    print(f"sequential cold read: {seq / 1e6:.0f} MB/s (O_DIRECT, 8 MiB blocks)")
    results: dict[str, object] = {"sequential_cold_bytes_per_s": seq}
    for mode in args.modes.split(","):
        r = measure(args.model, mode)
        results[mode] = r
        if "error" in r:
            print(f"{mode:13s} failed: {r['error']}")
            continue
        rate = (size - experts) / r["load_s"]
        print(f"{mode:13s} load {r['load_s']:6.2f} s (imports before it {r['import_s']:.2f} s)  read_bytes {r['read_bytes'] / 1e6:9.1f} MB  file resident "
              f"{r['file_resident_bytes'] / 1e6:9.1f} MB  RSS {r['rss'] / 1e6:8.1f} MB  non-expert bytes at "
              f"{rate / 1e6:.0f} MB/s = {rate / seq:.0%} of the sequential cold read")
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "size": size, "expert_bytes": experts,
                                         "time": time.time(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
