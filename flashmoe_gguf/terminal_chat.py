"""`flashmoe chat MODEL.gguf`: an interactive chat in the terminal, with the model's own chat template.

The answer streams as it is generated; the conversation is kept (the prompt prefix it shares with the previous
turn is not evaluated again: llama-cpp-python reuses the KV cache for it). Input: one line per message; a line
ending with a backslash continues on the next, and a message between lines of three double quotes spans any
number of lines. Commands: /stats (the expert cache's counters), /reset (forget the conversation), /help,
/exit (or Ctrl-D). Ctrl-C stops the answer being written (what was written stays in the conversation) or
clears the message being typed; it never ends the program.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

HELP = ("commands: /stats  expert cache counters | /reset  forget the conversation | /exit  quit (or Ctrl-D)\n"
        "a line ending with \\ continues on the next; a message between lines of \"\"\" spans several lines;\n"
        "Ctrl-C stops an answer")


@dataclass
class Conversation:
    system: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []


def read_message(readline: Callable[[str], str]) -> str | None:
    """One message from the user: None at end of input. readline(prompt) returns a line without its newline and
    raises EOFError at the end of input (input() does)."""
    try:
        line = readline(">>> ")
    except EOFError:
        return None
    if line.strip() == '"""':
        lines: list[str] = []
        while True:
            try:
                more = readline("... ")
            except EOFError:
                return "\n".join(lines)
            if more.strip() == '"""':
                return "\n".join(lines)
            lines.append(more)
    lines = [line]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        try:
            lines.append(readline("... "))
        except EOFError:
            break
    return "\n".join(lines)


def stats_line(st: dict[str, Any]) -> str:
    hits, misses = int(st.get("cache_hits", 0)), int(st.get("cache_misses", 0))
    return (f"[flashmoe] expert cache {st.get('cache_bytes', 0) / 2**20:.0f} of {st.get('ram_budget', 0) / 2**20:.0f} "
            f"MiB, hit rate {hits / max(hits + misses, 1):.0%} ({hits} hits, {misses} misses), "
            f"{st.get('expert_bytes_read', 0) / 2**30:.2f} GiB of experts read, kernels {st.get('kernel_isa', '?')}")


def answer(llm: Any, conv: Conversation, out: TextIO, temperature: float, max_tokens: int | None) -> None:
    """Stream the model's answer to the conversation into out and append it; Ctrl-C stops it (kept as written)."""
    content: list[str] = []
    reasoning = False
    try:
        for chunk in llm.create_chat_completion(messages=conv.messages, stream=True, temperature=temperature,
                                                max_tokens=max_tokens):
            delta = chunk["choices"][0].get("delta", {})
            think = delta.get("reasoning_content")
            if think:
                if not reasoning:
                    out.write("[thinking] ")
                    reasoning = True
                out.write(think)
            text = delta.get("content")
            if text:
                if reasoning:
                    out.write("\n[answer] ")
                    reasoning = False
                out.write(text)
                content.append(text)
            for call in delta.get("tool_calls") or []:
                fn = call.get("function") or {}
                out.write(f"[tool call {fn.get('name') or ''}{fn.get('arguments') or ''}]")
            out.flush()
    except KeyboardInterrupt:
        out.write(" [stopped]")
    finally:
        out.write("\n")
        out.flush()
        conv.messages.append({"role": "assistant", "content": "".join(content)})


def chat_loop(llm: Any, conv: Conversation, readline: Callable[[str], str], out: TextIO, temperature: float = 0.7,
              max_tokens: int | None = None) -> None:
    out.write(HELP + "\n")
    while True:
        try:
            text = read_message(readline)
        except KeyboardInterrupt:      # Ctrl-C while typing: drop that message
            out.write("\n")
            continue
        if text is None:
            out.write("\n")
            return
        command = text.strip()
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            conv.reset()
            out.write("[conversation reset]\n")
            continue
        if command == "/stats":
            out.write(stats_line(llm.flashmoe_stats()) + "\n")
            continue
        if command in ("/help", "/?"):
            out.write(HELP + "\n")
            continue
        if command.startswith("/"):
            out.write(f"unknown command {command.split()[0]}; /help lists them\n")
            continue
        if not command:
            continue
        conv.messages.append({"role": "user", "content": text})
        try:
            answer(llm, conv, out, temperature, max_tokens)
        except ValueError as exc:      # llama-cpp-python: the conversation no longer fits the context
            conv.messages.pop()
            out.write(f"[{exc}; /reset starts a new conversation]\n")


def chat(path: str, ram_budget: str | int = "auto", n_ctx: int = 4096, threads: int | None = None,
         cache: str = "lfu", temperature: float = 0.7, max_tokens: int | None = None, system: str | None = None,
         readline: Callable[[str], str] = input, out: TextIO = sys.stdout, verbose: bool = False,
         gpu_layers: int = 0, tensor_overrides: list[tuple[str, str]] | None = None,
         resident_repack: bool = False) -> None:
    from .offload import llama_kwargs
    from .runtime import Llama
    from .runtime_errors import FlashMoeError
    if n_ctx <= 0:
        raise FlashMoeError(f"--ctx must be at least 1, got {n_ctx}")
    if max_tokens is not None and max_tokens <= 0:
        raise FlashMoeError(f"-n/--tokens must be at least 1, got {max_tokens}")
    kw = {"n_threads": threads} if threads else {}
    kw.update(llama_kwargs(gpu_layers, tensor_overrides))   # GPU layers next to the streamed experts (offload.py)
    llm = Llama(model_path=path, ram_budget=ram_budget, n_ctx=n_ctx, verbose=verbose, cache=cache,
                resident_repack=resident_repack, **kw)
    try:
        _install_chat_handler(llm)
        conv = Conversation(system=system)
        conv.reset()
        chat_loop(llm, conv, readline, out, temperature, max_tokens)
    finally:
        llm.close()


def _install_chat_handler(llm: Any) -> None:
    """the model family's chat format with tool calls and reasoning (flashmoe_gguf.chat), where it applies"""
    try:
        from .chat import chat_handler_for
    except ImportError:
        return
    handler = chat_handler_for(llm)
    if handler is not None:
        llm.chat_handler = handler
