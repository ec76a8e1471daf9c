"""Pauses the signal tests switch on (tests/test_interrupts.py, tests/test_terminal_chat.py), so that a signal they
send lands in the middle of the work however fast the machine is. Each is read from the environment once by the
code that pauses; unset (always, outside those tests) nothing happens."""

from __future__ import annotations

import os
import time

WRITE_AT = "FLASHMOE_TEST_PAUSE_WRITE_AT"    # the converter's writer pauses once the file holds N bytes
EVAL_AT = "FLASHMOE_TEST_PAUSE_EVAL_AT"      # flashmoe_gguf.Llama pauses after its Nth eval (the prompt is the 1st)


def pause_at(variable: str) -> int:
    """N from the environment, 0 (never) when unset"""
    return int(os.environ.get(variable) or 0)


def wait_for_a_signal(seconds: float = 60) -> None:
    """Sleeps in the calling thread for up to `seconds`: a signal's handler (SIGINT's KeyboardInterrupt, the CLI's
    SIGTERM) raises here, as it would anywhere in the work; without a signal the work goes on afterwards."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
