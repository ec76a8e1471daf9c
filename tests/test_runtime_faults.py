"""Faults while a streamed model is running: a Python exception from the call in progress, never a crash or
wrong tokens."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_runtime import PROMPT, gguf_for, streamed


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "m.gguf"
    shutil.copy(gguf_for("qwen3_moe", "Q4_K"), dst)
    return dst


def test_injected_read_error_raises(model_copy: Path) -> None:
    from flashmoe_gguf import FlashMoeError
    llm = streamed(model_copy, 1)   # nothing stays cached: every token reads
    llm.eval(PROMPT[:4])
    llm._fm.inject_read_error(3)
    with pytest.raises(FlashMoeError, match="read error.*injected"):
        llm.eval(PROMPT[4:8])
    # the model stays failed rather than producing tokens from missing experts
    with pytest.raises(FlashMoeError):
        llm.eval([5])
    llm.close()


def test_truncated_while_loaded_raises(model_copy: Path) -> None:
    from flashmoe_gguf import FlashMoeError
    llm = streamed(model_copy, 1)
    llm.eval(PROMPT[:4])
    with open(model_copy, "r+b") as f:
        f.truncate(model_copy.stat().st_size // 2)
    with pytest.raises(FlashMoeError, match="changed size|truncated"):
        llm.eval(PROMPT[4:8])
    llm.close()


def test_replaced_while_loaded_raises(model_copy: Path, tmp_path: Path) -> None:
    from flashmoe_gguf import FlashMoeError
    llm = streamed(model_copy, 1)
    llm.eval(PROMPT[:4])
    other = tmp_path / "other.gguf"
    shutil.copy(model_copy, other)
    os.replace(other, model_copy)
    with pytest.raises(FlashMoeError, match="replaced"):
        llm.eval(PROMPT[4:8])
    llm.close()


def test_truncated_before_load_is_a_clear_error(model_copy: Path) -> None:
    from flashmoe_gguf import FlashMoeError
    with open(model_copy, "r+b") as f:
        f.truncate(model_copy.stat().st_size - 100_000)
    with pytest.raises((FlashMoeError, ValueError)):
        streamed(model_copy, "64M")


def test_no_crash_in_subprocess(model_copy: Path) -> None:
    """The same truncation in a fresh process: exits cleanly with an exception, not a signal."""
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_runtime import streamed, PROMPT
from flashmoe_gguf import FlashMoeError
llm = streamed({str(model_copy)!r}, 1)
llm.eval(PROMPT[:4])
open({str(model_copy)!r}, 'r+b').truncate(1000)
try:
    llm.eval(PROMPT[4:8])
except FlashMoeError as e:
    print('raised', e)
    sys.exit(3)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=model_copy.parent)
    assert res.returncode == 3, res.stderr[-2000:]
    assert "raised" in res.stdout


def test_many_experts_many_slots_no_hang(tmp_path: Path, cache: Path) -> None:
    """512 experts and a long prompt: hundreds of cache slots are created while reads are in flight (the slot
    table grows under the I/O threads). Must finish, and match stock (repack off) bit for bit. Run in a
    subprocess with a timeout so a hang fails the test instead of the suite."""
    from flashmoe_gguf.synth import synth
    path = tmp_path / "q35.gguf"
    synth("qwen35-397b-a17b", path, tiny=True, pool=4, seed=3, threads=2, cache_dir=cache)
    code = f"""
import sys, numpy as np
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_runtime import streamed
from reference import llama as stock
toks = [int(t) for t in np.random.default_rng(0).integers(5, 3000, 96)]
ref = stock({str(path)!r}); ref.eval(toks); a = np.array(ref.scores[:len(toks)]); ref.close()
for budget in (1, 1 << 30):
    llm = streamed({str(path)!r}, budget); llm.eval(toks); b = np.array(llm.scores[:len(toks)])
    assert np.array_equal(a, b), np.abs(a - b).max()
    llm.close()
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


def _set_u32(path: Path, key: str, value: int) -> None:
    """overwrite a UINT32 metadata value in place"""
    import struct

    from flashmoe_gguf.gguf_index import read_index
    idx = read_index(path)
    start, end = next((s, e) for k, s, e in idx.kv_spans if k == key)
    with open(path, "r+b") as f:
        f.seek(end - 8)
        vtype, _ = struct.unpack("<II", f.read(8))
        assert vtype == 4, f"{key} is not UINT32"
        f.seek(end - 4)
        f.write(struct.pack("<I", value))


@pytest.mark.parametrize("key,value,message", [
    ("qwen3moe.expert_count", 0, "expert_count is 0"), ("qwen3moe.expert_count", 16, "says 16 experts"),
    ("qwen3moe.expert_used_count", 0, "expert_used_count is 0"),
    ("qwen3moe.expert_used_count", 9, "expert_used_count is 9")])
def test_inconsistent_expert_counts_are_errors_not_aborts(model_copy: Path, key: str, value: int,
                                                          message: str) -> None:
    """llama.cpp asserts on these (GGML_ASSERT: the process aborts); flashmoe refuses the file first. In a child
    process, so that a regression is a failed test, not a dead test run."""
    _set_u32(model_copy, key, value)
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from flashmoe_gguf import FlashMoeError\n"
            "from test_runtime import streamed\n"
            "try:\n    streamed(sys.argv[2], '64M')\nexcept FlashMoeError as e:\n    print('ERR', e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(model_copy)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("ERR ") and message in r.stdout, r.stdout


TOKEN_EDITS = {   # tokenizer.ggml.tokens[3990:3992] of the test model
    "duplicate": lambda t: [t[0], t[0]],
    "empty-twice": lambda t: ["", ""],                      # llama.cpp names each "[EMPTY_<id>]": different
    "empty-and-its-name": lambda t: ["", "[EMPTY_3990]"],
    "nul-cut": lambda t: [t[0], t[0] + "\0x"],            # llama.cpp reads a C string: the second is the first
}


@pytest.mark.parametrize("edit", sorted(TOKEN_EDITS))
def test_duplicate_tokens_are_errors_not_aborts(tmp_path: Path, edit: str) -> None:
    """llama.cpp's vocabulary asserts that no two tokens have the same text (the fuzz case of llama seed 5 input
    6881 aborted the process). Reference: stock llama.cpp on the same file in a child process (vocab_only); flashmoe
    refuses exactly the files it aborts on, with a FlashMoeError naming both tokens, and loads the others."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from fuzzlib.gguf_struct import parse, serialize

    from conftest import converted
    g = parse(converted("qwen3_moe", "default").read_bytes())
    kv = next(k for k in g.kvs if k.key == "tokenizer.ggml.tokens")
    etype, tokens = kv.value
    tokens = list(tokens)
    tokens[3990:3992] = TOKEN_EDITS[edit](tokens[3990:3992])
    kv.value = (etype, tokens)
    path = tmp_path / "m.gguf"
    path.write_bytes(serialize(g))
    stock = subprocess.run([sys.executable, "-c", "import sys, llama_cpp\n"
                            "llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)\nprint('OK')",
                            str(path)], capture_output=True, text=True, timeout=120,
                           # ggml's abort would otherwise attach gdb for a backtrace (minutes under tools/sanitize.py)
                           env={**os.environ, "GGML_NO_BACKTRACE": "1"})
    aborts = stock.returncode == -6
    assert aborts or stock.stdout.strip() == "OK", (stock.returncode, stock.stderr[-2000:])
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from flashmoe_gguf import FlashMoeError\n"
            "from test_runtime import streamed\n"
            "try:\n    streamed(sys.argv[2], '64M').close()\n    print('LOADED')\n"
            "except FlashMoeError as e:\n    print('ERR', e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    if aborts:
        assert r.stdout.startswith("ERR ") and "tokens 3990 and 3991 of tokenizer.ggml.tokens" in r.stdout, r.stdout
    else:
        assert r.stdout.strip() == "LOADED", r.stdout
    assert edit == "empty-twice" or aborts        # the edits that collide do abort stock


def test_bad_chat_template_is_a_flashmoe_error(tmp_path: Path) -> None:
    """a chat template that is not valid Jinja (llama fuzz seed 6): stock llama-cpp-python raises jinja2's
    TemplateSyntaxError from Llama(); flashmoe's Llama a FlashMoeError naming the file and the key"""
    import jinja2
    import llama_cpp
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from fuzzlib.gguf_struct import parse, serialize

    from conftest import converted
    from flashmoe_gguf import FlashMoeError, Llama
    g = parse(converted("qwen3_moe", "default").read_bytes())
    kv = next(k for k in g.kvs if k.key == "tokenizer.chat_template")
    kv.value = "{{ messages }"
    path = tmp_path / "m.gguf"
    path.write_bytes(serialize(g))
    with pytest.raises(jinja2.TemplateSyntaxError):
        llama_cpp.Llama(model_path=str(path), n_ctx=32, verbose=False)
    with pytest.raises(FlashMoeError, match="chat template.*not valid Jinja") as exc:
        Llama(model_path=str(path), ram_budget="8M", n_ctx=32, verbose=False)
    assert str(path) in str(exc.value)


# --- concurrent loads ----------------------------------------------------------------------------------------------

CONCURRENT = """
import sys, threading
import numpy as np
import llama_cpp
sys.path.insert(0, sys.argv[1])
from flashmoe_gguf import Llama as FlashMoeLlama
from flashmoe_gguf.stock import no_extra_buffer_types
from test_runtime import BATCH, gguf_for

# (kind, file): stock with extra buffer types off and stock as llama-cpp-python loads it by default (CPU_REPACK on:
# other logits for this file) on the same file, flashmoe with every expert read from disk, flashmoe with everything
# cached
MODELS = [("stock-norepack", gguf_for("mixtral", "Q4_K")), ("stock-default", gguf_for("mixtral", "Q4_K")),
          ("flashmoe", gguf_for("qwen3_moe", "Q4_K")), ("flashmoe-cached", gguf_for("mixtral", "Q8_0"))]
KW = dict(n_ctx=128, n_batch=128, logits_all=True, verbose=False, seed=0, n_threads=1, type_k=0, type_v=0)

def load(kind, path):
    if kind == "stock-norepack":
        with no_extra_buffer_types():
            return llama_cpp.Llama(model_path=str(path), **KW)
    if kind == "stock-default":
        return llama_cpp.Llama(model_path=str(path), **KW)
    return FlashMoeLlama(model_path=str(path), ram_budget=1 if kind == "flashmoe" else "64M", **KW)

def run(kind, path):
    llm = load(kind, path)
    try:
        llm.eval(BATCH)
        return (llm.n_vocab(), llm.metadata.get("general.architecture"),
                np.array(llm.scores[:len(BATCH)], dtype=np.float32), type(llm).__module__)
    finally:
        llm.close()

ref = [run(k, p) for k, p in MODELS]          # one at a time
assert not np.array_equal(ref[0][2], ref[1][2]), "stock's default (repack) logits must differ from repack-off"
rounds = int(sys.argv[2])
barrier = threading.Barrier(len(MODELS))
failures = []

def worker(i):
    kind, path = MODELS[i]
    for r in range(rounds):
        try:
            barrier.wait(timeout=600)          # every round's loads start together
            got = run(kind, path)
        except Exception as exc:
            failures.append(f"{kind} round {r}: {type(exc).__name__}: {exc}")
            continue
        want = ref[i]
        if got[:2] != want[:2] or got[3] != want[3]:
            failures.append(f"{kind} round {r}: n_vocab/arch/class {got[:2]} {got[3]}, want {want[:2]} {want[3]}")
        elif not np.array_equal(got[2].view(np.uint32), want[2].view(np.uint32)):
            failures.append(f"{kind} round {r}: logits differ by {np.abs(got[2] - want[2]).max():.3g}")

threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(MODELS))]
for t in threads: t.start()
for t in threads: t.join()
print("\\n".join(failures) or "ok")
print("stderr still here", file=sys.stderr)   # llama-cpp-python's silencing of loads did not keep them at /dev/null
"""


def test_concurrent_stock_and_flashmoe_loads() -> None:
    """Four threads load and run models at the same time, round after round: two stock llama_cpp.Llama (one with
    extra buffer types off through flashmoe_gguf.stock, one with llama.cpp's defaults) and two flashmoe ones
    (streaming every expert, and all cached), on two files. Each gets its own file, configuration and class, and
    the logits it got alone, bit for bit, and the process's stdout and stderr still work afterwards
    (flashmoe_gguf.loader._SharedSuppress). In a child process with a timeout: a crash or a deadlock fails the
    test."""
    for name, experts in (("mixtral", "Q4_K"), ("mixtral", "Q8_0"), ("qwen3_moe", "Q4_K")):
        gguf_for(name, experts)           # converted here, not in four threads at once
    r = subprocess.run([sys.executable, "-c", CONCURRENT, str(Path(__file__).parent), "3"], capture_output=True,
                       text=True, timeout=600, env=dict(os.environ, OMP_WAIT_POLICY="passive"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "ok", r.stdout
    assert r.stderr.strip().endswith("stderr still here"), r.stderr[-3000:]


@pytest.mark.parametrize("how", ["replace", "overwrite", "truncate"])
def test_changed_between_index_and_store_open(model_copy: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """The file changes after read_index read its header and before the C store opens it (the seam
    StreamedModel._open_store): another file renamed over it, the same size overwritten in place, or truncated. The
    store finds the file it opened is not the one indexed (device and inode, size, modification time) and the load
    is a FlashMoeError naming the file, before anything is read from it."""
    from flashmoe_gguf import FlashMoeError
    from flashmoe_gguf import streamed as sm
    before = os.stat(model_copy)
    other = gguf_for("qwen3_moe", "Q8_0")
    real_open = sm.StreamedModel._open_store
    done = []

    def open_store(self: sm.StreamedModel, *args: object) -> object:
        assert self.model.files[0].identity.ino == before.st_ino     # indexed before the change
        if how == "replace":
            shutil.copy(other, str(model_copy) + ".new")
            os.replace(str(model_copy) + ".new", model_copy)
        elif how == "overwrite":
            with open(model_copy, "r+b") as f:
                f.seek(before.st_size // 8)
                f.write(os.urandom(4096))
        else:
            os.truncate(model_copy, before.st_size - 4096)
        done.append(os.stat(model_copy))
        return real_open(self, *args)

    monkeypatch.setattr(sm.StreamedModel, "_open_store", open_store)
    want = {"replace": "was replaced on disk after its header was read",
            "overwrite": "was modified on disk after its header was read",
            "truncate": "changed size on disk after its header was read"}[how]
    with pytest.raises(FlashMoeError, match=want) as exc:
        streamed(model_copy, 1)
    assert str(model_copy) in str(exc.value)
    after = done[0]                    # the change happened and is one the identity can see
    assert (after.st_ino, after.st_size, after.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns)


def test_unchanged_file_passes_the_identity_check(model_copy: Path) -> None:
    """Control: the same load with the file left alone computes (the identity read_index recorded is the one the
    store opened), and it is the file's own fstat."""
    from flashmoe_gguf.gguf_index import read_index
    st = os.stat(model_copy)
    ident = read_index(model_copy).identity
    assert ident is not None and (ident.dev, ident.ino, ident.size, ident.mtime_ns) == (
        st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    llm = streamed(model_copy, 1)
    llm.eval(PROMPT[:4])
    llm.close()


# --- a model file rewritten while it loads -------------------------------------------------------------------------

REWRITE_DURING_LOAD = """
import os, shutil, sys
import numpy as np
import llama_cpp
sys.path.insert(0, sys.argv[1])
from flashmoe_gguf import FlashMoeError
from flashmoe_gguf import streamed as sm
from test_runtime import BATCH, logits, streamed

path, how, when, other = sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
size = os.path.getsize(path)
done = []

def rewrite():
    done.append(how)
    if how == "truncate":
        os.truncate(path, size // 2)
    elif how == "overwrite":               # the same size, in place, where llama.cpp has already read
        with open(path, "r+b") as f:
            f.seek(size // 8)
            f.write(os.urandom(4096))
    elif how == "replace":                 # another file renamed over it (what a download or a converter does)
        shutil.copy(other, path + ".new")
        os.replace(path + ".new", path)

@llama_cpp.llama_progress_callback
def progress(p, user_data):
    if p >= when and not done:
        rewrite()
    return True

real_load = sm.StreamedModel.load

def load(self, params):
    if when < 0:
        rewrite()                          # after the index and the store opened the file, before llama.cpp
    else:
        params.progress_callback = progress
    return real_load(self, params)

sm.StreamedModel.load = load
try:
    llm = streamed(path, 1)
    out = logits(llm, BATCH, batch=True)
    np.save(path + ".npy", out)
    print("LOADED", done)
except (FlashMoeError, ValueError) as e:
    print("ERR", type(e).__name__, e, done)
"""


@pytest.mark.parametrize("when", [-1.0, 0.5], ids=["before-llama-load", "mid-llama-load"])
@pytest.mark.parametrize("how", ["truncate", "overwrite", "replace"])
def test_rewritten_during_load(model_copy: Path, how: str, when: float) -> None:
    """The file is truncated, overwritten in place or replaced while the model loads (after our index is read,
    before llama.cpp reads the weights, or halfway through them): the load fails with a FlashMoeError naming the
    file and what happened, in a child process (no crash, no SIGBUS); never a model that computes from two files.
    (During decode: test_truncated_while_loaded_raises, test_replaced_while_loaded_raises.)"""
    other = gguf_for("qwen3_moe", "Q8_0")
    r = subprocess.run([sys.executable, "-c", REWRITE_DURING_LOAD, str(Path(__file__).parent), str(model_copy), how,
                        str(when), str(other)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("ERR FlashMoeError ") and str(model_copy) in r.stdout, r.stdout
    assert f"['{how}']" in r.stdout, r.stdout         # the rewrite happened
    want = {"truncate": "changed size|ended at byte|shorter than when it was indexed", "overwrite": "modified",
            "replace": "replaced"}[how]
    assert re.search(want, r.stdout), r.stdout
