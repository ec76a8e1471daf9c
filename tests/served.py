"""`flashmoe serve` as a real server process on loopback, for tests: started on a free port (--port 0, the port
read from its first line), waited for until GET /health answers, stopped with a signal.

    with serve(path, "--ctx", "512") as srv:
        srv.client().chat.completions.create(...)      # the official openai client

conftest.py's `served_tiny` / `openai_client` fixtures serve the tiny qwen3_moe model this way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
# one thread: two ggml threads spin against each other (and other jobs) on a 2-core machine
DEFAULT_ARGS = ("--threads", "1", "--ram-budget", "64M")


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kw: Any) -> Any:
        import openai
        kw.setdefault("timeout", 60.0)
        kw.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=kw.pop("api_key", "unused"), **kw)

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, None, timeout=timeout)

    def request(self, method: str, path: str, body: Optional[bytes], timeout: float = 30.0,
                headers: Optional[dict[str, str]] = None) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.base_url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()

    def post_json(self, path: str, payload: Any, timeout: float = 30.0) -> tuple[int, dict[str, str], Any]:
        status, headers, raw = self.request("POST", path, json.dumps(payload).encode(), timeout=timeout)
        return status, headers, json.loads(raw)

    def health(self) -> tuple[int, dict[str, Any]]:
        status, _, raw = self.get("/health")
        return status, json.loads(raw)

    def metrics_text(self) -> str:
        status, headers, raw = self.get("/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain"), (status, headers)
        return raw.decode()

    def metric(self, name: str) -> float:
        """The sum of a metric's samples (its families' samples named exactly `name`)."""
        total, found = 0.0, False
        for line in self.metrics_text().splitlines():
            if line.startswith("#") or not line:
                continue
            sample, value = line.rsplit(" ", 1)
            if sample.split("{", 1)[0] == name:
                total += float(value)
                found = True
        assert found, f"no metric {name}"
        return total

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}\n--- server log ---\n{self.log()[-3000:]}")

    def idle(self, timeout: float = 20.0) -> None:
        """Wait until no request is on the model or waiting for it."""
        self.wait_until(lambda: self.metric("flashmoe_requests_active") == 0
                        and self.metric("flashmoe_queue_waiting") == 0, timeout, "the server to be idle")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"server did not stop within {STOP_TIMEOUT_S} s\n{self.log()[-3000:]}")


def start(model: Optional[Path], *args: str, log_path: Path, env: Optional[dict[str, str]] = None) -> Served:
    # with --config (model None) the file holds the model settings
    cmd = [sys.executable, "-m", "flashmoe_gguf.cli", "serve", *([str(model), *DEFAULT_ARGS] if model else []),
           "--port", "0", *args]
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    log.close()
    end = time.monotonic() + START_TIMEOUT_S
    port = None
    while time.monotonic() < end and proc.poll() is None:
        match = re.search(r"on http://127\.0\.0\.1:(\d+)/v1", log_path.read_text(errors="replace"))
        if match:
            port = int(match.group(1))
            srv = Served(proc, port, log_path)
            with contextlib.suppress(OSError):
                if srv.health()[0] in (200, 503):
                    return srv
        time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    raise AssertionError(f"flashmoe serve did not start (rc {proc.returncode}):\n{log_path.read_text()[-3000:]}")


def assert_clean_stop(srv: Served, rc: int, signame: str = "SIGTERM") -> None:
    """The server exited 0 on its stop signal, said so, and printed no traceback."""
    log = srv.log()
    assert rc == 0, f"rc {rc}\n{log[-3000:]}"
    assert f"flashmoe serve: stopped ({signame})" in log, log[-3000:]
    assert "Traceback" not in log, log[-5000:]


@contextlib.contextmanager
def serve(model: Optional[Path], *args: str, log_path: Path, env: Optional[dict[str, str]] = None
          ) -> Iterator[Served]:
    """A started server; stopped with SIGTERM at the end, which must be clean (assert_clean_stop)."""
    srv = start(model, *args, log_path=log_path, env=env)
    try:
        yield srv
    except BaseException:
        srv.stop()
        raise
    assert_clean_stop(srv, srv.stop())
