"""Multi-turn through `flashmoe serve`: does the second turn of a conversation reuse the first's KV cache?

Starts `flashmoe serve MODEL` (a real server process on loopback), then, per round:
  turn 1   system prompt (about --system-tokens tokens) + a question, streamed: time to first token (TTFT)
  turn 2   the same history + the answer + a new question: TTFT, which should need only the new tokens
  control  a conversation of turn 2's length with another system prompt (no shared prefix): TTFT
and prints every figure, the medians, the ratio turn 2 / turn 1 and the tokens each request evaluated (from
GET /metrics: prompt tokens not reused from the KV cache, plus generated ones).

    python tools/bench_serve.py /work/synth/q3-4L.gguf --rounds 3
    (a real-shape model: flashmoe synth qwen3-30b-a3b --layers 4 -o q3-4L.gguf)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

SENTENCE = ("The archive keeps every report in the order it arrived, and each report names its author, "
            "its date and the instrument that produced it. ")


def start_server(model: Path, extra: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    cmd = [sys.executable, "-m", "flashmoe_gguf.cli", "serve", str(model), "--port", "0", *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", log.read_text(errors="replace"))
        if m:
            try:
                with urllib.request.urlopen(m.group(1) + "/health", timeout=5) as r:
                    if r.status == 200:
                        return proc, m.group(1)
            except OSError:
                pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"bench_serve: the server did not start:\n{log.read_text()[-2000:]}")


def tokens_evaluated(base: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("flashmoe_tokens_evaluated_total"))


def turn(client: Any, base: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    """One streamed chat request: TTFT (to the first chunk that carries generated text or the end), total time,
    the answer, and the tokens the server evaluated for it."""
    before = tokens_evaluated(base)
    t0 = time.perf_counter()
    ttft = None
    text = []
    for chunk in client.chat.completions.create(model="m", messages=messages, max_tokens=max_tokens,
                                                temperature=0, stream=True):
        choice = chunk.choices[0] if chunk.choices else None
        if choice is None:
            continue
        if ttft is None and (choice.delta.content or choice.finish_reason):
            ttft = time.perf_counter() - t0
        text.append(choice.delta.content or "")
    total = time.perf_counter() - t0
    return {"ttft_s": ttft if ttft is not None else total, "total_s": total, "answer": "".join(text),
            "evaluated": tokens_evaluated(base) - before}


def system_prompt(n_tokens: int, tag: str) -> str:
    # about 25 tokens per sentence with Qwen's tokenizer; the tag first, so two rounds share no prefix
    return f"Session {tag}. " + SENTENCE * max(1, n_tokens // 25)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--system-tokens", type=int, default=1500, help="length of the system prompt (about)")
    ap.add_argument("--answer-tokens", type=int, default=16, help="max_tokens of each answer")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ram-budget", default="auto")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = ap.parse_args(argv)
    import openai

    log = Path(tempfile.mkdtemp(prefix="bench-serve-")) / "server.log"
    proc, base = start_server(args.model, ["--ctx", str(args.ctx), "--threads", str(args.threads),
                                           "--ram-budget", args.ram_budget], log)
    rows: list[dict[str, Any]] = []
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=600, max_retries=0)
        turn(client, base, [{"role": "user", "content": "warm up"}], 4)    # experts read, caches allocated
        for r in range(args.rounds):
            system = {"role": "system", "content": system_prompt(args.system_tokens, f"{r}-{os.getpid()}")}
            q1 = {"role": "user", "content": "Which instrument produced the first report?"}
            t1 = turn(client, base, [system, q1], args.answer_tokens)
            history = [system, q1, {"role": "assistant", "content": t1["answer"]},
                       {"role": "user", "content": "And who wrote the last one?"}]
            t2 = turn(client, base, history, args.answer_tokens)
            other = {"role": "system", "content": system_prompt(args.system_tokens, f"control-{r}-{os.getpid()}")}
            control = turn(client, base, [other] + history[1:], args.answer_tokens)
            row = {"round": r + 1, "turn1": t1, "turn2": t2, "control": control}
            rows.append(row)
            print(f"round {r + 1}: TTFT turn 1 {t1['ttft_s']:.3f} s ({t1['evaluated']:.0f} tokens evaluated), "
                  f"turn 2 {t2['ttft_s']:.3f} s ({t2['evaluated']:.0f}), control {control['ttft_s']:.3f} s "
                  f"({control['evaluated']:.0f}); turn 2 / turn 1 = {t2['ttft_s'] / t1['ttft_s']:.3f}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)

    def median(key: str) -> float:
        return statistics.median(row[key]["ttft_s"] for row in rows)

    m1, m2, mc = median("turn1"), median("turn2"), median("control")
    print(f"\nmedian TTFT over {len(rows)} rounds: turn 1 {m1:.3f} s, turn 2 {m2:.3f} s, control (turn 2's length, "
          f"no shared prefix) {mc:.3f} s")
    print(f"turn 2 / turn 1 = {m2 / m1:.3f}; turn 2 / control = {m2 / mc:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "args": vars(args) | {"model": str(args.model),
                                         "json": str(args.json)}, "rounds": rows,
                                         "median_ttft_s": {"turn1": m1, "turn2": m2, "control": mc}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
