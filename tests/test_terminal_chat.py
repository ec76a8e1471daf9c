"""`flashmoe chat`: the terminal chat, driven through its input like a user (scripted lines in-process, and the
real command with stdin piped and SIGINT sent while it answers), on a tiny model with a ChatML template."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flashmoe_gguf.terminal_chat import Conversation, chat_loop, read_message
from test_runtime import gguf_for, streamed


def lines(*items: str):  # type: ignore[no-untyped-def]
    it = iter(items)

    def readline(prompt: str) -> str:
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None
    return readline


def test_read_message_multiline() -> None:
    assert read_message(lines("hello")) == "hello"
    assert read_message(lines("one \\", "two\\", "three")) == "one \ntwo\nthree"
    assert read_message(lines('"""', "a", "", "b", '"""', "after")) == "a\n\nb"
    assert read_message(lines('"""', "unterminated")) == "unterminated"
    assert read_message(lines()) is None


def test_conversation_streams_keeps_history_and_commands() -> None:
    llm = streamed(gguf_for("qwen3_moe", "Q4_K"), "64M")
    try:
        conv = Conversation(system="be brief")
        conv.reset()
        out = io.StringIO()
        chat_loop(llm, conv, lines("hello", "/stats", "and again", "/nope", "/reset", "/exit", "never read"), out,
                  temperature=0.0, max_tokens=8)
        text = out.getvalue()
        assert "[flashmoe] expert cache" in text and "hit rate" in text
        assert "unknown command /nope" in text and "[conversation reset]" in text
        assert conv.messages == [{"role": "system", "content": "be brief"}]
        # the answers are what llama-cpp-python's chat completion gives for the same history (greedy)
        llm.reset()
        first = llm.create_chat_completion(messages=[{"role": "system", "content": "be brief"},
                                                     {"role": "user", "content": "hello"}],
                                           temperature=0.0, max_tokens=8)["choices"][0]["message"]["content"]
        assert first and first in text
    finally:
        llm.close()


def _cli(path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "flashmoe_gguf.cli", "chat", str(path), "--ram-budget", "64M",
                             "--temp", "0", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=path.parent, env=env)


def test_cli_chat_end_of_input_and_errors() -> None:
    path = gguf_for("qwen3_moe", "Q4_K")
    p = _cli(path, "-n", "6")
    out, err = p.communicate("hi there\n/stats\n", timeout=300)
    assert p.returncode == 0, err
    assert "[flashmoe] expert cache" in out
    p = _cli(path, "-n", "0")
    out, err = p.communicate("", timeout=120)
    assert p.returncode == 1 and err.strip() == "flashmoe chat: error: -n/--tokens must be at least 1, got 0"
    p = subprocess.run([sys.executable, "-m", "flashmoe_gguf.cli", "chat", "/nonexistent.gguf"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1 and "error" in p.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT")
def test_ctrl_c_stops_the_answer_not_the_program(sigint_default) -> None:  # type: ignore[no-untyped-def]
    path = gguf_for("qwen3_moe", "Q4_K")
    # the runtime's test seam (flashmoe_gguf/runtime.py): the 21st eval (the prompt, then 20 tokens, some text
    # already written) waits there for the signal, so Ctrl-C always lands while the answer is being generated
    # however fast the machine would finish it (the tiny model writes its whole answer in about a second)
    p = _cli(path, "-n", "100000", "--ctx", "4096", env=dict(os.environ, FLASHMOE_TEST_PAUSE_EVAL_AT="21"))
    try:
        _interrupt_an_answer(p)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _interrupt_an_answer(p: subprocess.Popen[str]) -> None:
    assert p.stdin and p.stdout
    p.stdin.write("tell me everything\n")
    p.stdin.flush()
    # wait until the answer has started (the help text, then generated text)
    import select
    fd = p.stdout.fileno()
    deadline = time.monotonic() + 120
    seen = b""
    while time.monotonic() < deadline and len(seen.partition(b">>> ")[2]) < 8:   # some of the answer written
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            seen += os.read(fd, 4096)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    time.sleep(0.5)
    p.stdin.write("/stats\n")
    p.stdin.close()
    rest = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 120)
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            break
        rest += chunk
    p.wait(timeout=120)
    err = p.stderr.read() if p.stderr else ""
    seen_text = (seen + rest).decode("utf-8", "replace")
    assert p.returncode == 0, err
    assert "[stopped]" in seen_text and "[flashmoe] expert cache" in seen_text
    assert "Traceback" not in err
