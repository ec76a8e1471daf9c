"""llama.cpp's own pipeline for the tests: its converter (`convert_hf_to_gguf.py` from the pinned llama-cpp-python
sdist) and its quantizer (`llama_model_quantize` in the libllama llama-cpp-python ships), so that the runtime is
tested on GGUFs made the way the hub's are (llama.cpp's tensor order, 32-byte alignment, its quant mixes).

The tiny test tokenizers keep the first 4000 tokens of a real vocabulary, so llama.cpp's converter cannot
recognise their pre-tokenizer by its hash of a tokenization: the wrapper tells it the name instead (what it
would find for the full vocabulary). Everything else is llama.cpp's own code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

from flashmoe_gguf.sdist import LLAMA_CPP_PYTHON_VERSION, download_sdist

# pre-tokenizer names of the test tokenizers (the vocab GGUFs of tests/tiny_models.py)
PRE_NAME = {"qwen2": "qwen2", "qwen35": "qwen35", "gpt-2": "gpt-2", "llama-spm": None, "gpt-4o": "gpt-4o"}
CONVERTER_PARTS = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/conversion/", "vendor/llama.cpp/gguf-py/")

WRAPPER = r"""
import sys, runpy
from pathlib import Path
sys.argv = [sys.argv[1]] + sys.argv[3:]
tree = Path(sys.argv[0]).parent
sys.path[:0] = [str(tree), str(tree / "gguf-py")]      # llama.cpp's own gguf-py, as the script itself does
pre = {pre!r}
if pre:
    import conversion.base as base
    for cls in [c for c in vars(base).values() if isinstance(c, type) and hasattr(c, "get_vocab_base_pre")]:
        cls.get_vocab_base_pre = lambda self, tokenizer: pre
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def llama_cpp_tree(cache: Path) -> Path:
    """llama.cpp's converter (script, conversion/ package, gguf-py) extracted from the sdist into the cache."""
    root = cache / f"llama-cpp-converter-{LLAMA_CPP_PYTHON_VERSION}"
    done = root / ".complete"
    if done.exists():
        return root / "vendor" / "llama.cpp"
    archive = download_sdist(cache / "sdist-archive")
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/"
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            rel = m.name[len(prefix):] if m.name.startswith(prefix) else ""
            if m.isfile() and rel.startswith(CONVERTER_PARTS):
                target = root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                target.write_bytes(src.read())
    done.write_text("ok")
    return root / "vendor" / "llama.cpp"


def hf_to_gguf(cache: Path, checkpoint: Path, out: Path, tokenizer: str, extra: tuple[str, ...] = ()) -> Path:
    """llama.cpp's convert_hf_to_gguf.py, F32 output (atomically to out)."""
    if out.exists():
        return out
    tree = llama_cpp_tree(cache)
    tmp = out.with_name(out.name + ".partial")
    code = WRAPPER.format(pre=PRE_NAME.get(tokenizer))
    r = subprocess.run([sys.executable, "-c", code, str(tree / "convert_hf_to_gguf.py"), "--", str(checkpoint),
                        "--outtype", "f32", "--outfile", str(tmp), *extra], capture_output=True, text=True, timeout=900,
                       env={k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"})
    if r.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf failed for {checkpoint}:\n{r.stderr[-4000:]}")
    os.replace(tmp, out)
    return out


def quantize(src: Path, out: Path, ftype: str, threads: int = 2) -> Path:
    """llama.cpp's llama_model_quantize (libllama), e.g. ftype "Q4_K_M" (LLAMA_FTYPE_MOSTLY_Q4_K_M)."""
    if out.exists():
        return out
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = threads
    tmp = out.with_name(out.name + ".partial")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0 or not tmp.exists():
        raise RuntimeError(f"llama_model_quantize {ftype} failed for {src} (rc {rc})")
    os.replace(tmp, out)
    return out
