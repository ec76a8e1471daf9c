"""Runs a target's inputs in a worker process (forked after the seeds are built) with a memory limit and a timeout
per input, and classifies each: ok, clean (the target's documented exception), crash (any other exception, or the
worker killed by a signal), hang (no answer within the timeout: the worker is killed and restarted). A worker's
RSS and open descriptors are sampled as it goes: growth over many inputs is reported as a leak. Crashing and
hanging inputs are saved as regression cases. A worker killed by a signal while a file it had mapped (a shared
library) was rewritten in place is not filed as a crash of its input if that input then runs clean in a fresh
worker: it is counted as an environment death (mapped.py)."""

from __future__ import annotations

import base64
import faulthandler
import gc
import hashlib
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .mapped import MappedFiles
from .targets import Case, Target, write_case

CORPUS = Path(__file__).resolve().parents[2] / "tests" / "fuzz_corpus"
LEAK_WARMUP = 300            # inputs before the baseline is taken
LEAK_RSS = 128 << 20         # growth over the baseline that counts as a leak
LEAK_FDS = 32


@dataclass
class Stats:
    target: str
    inputs: int = 0
    ok: int = 0
    clean: int = 0
    crashes: int = 0
    hangs: int = 0
    leaks: int = 0
    unsplit: int = 0             # ran without a finding in a batch whose worker was restarted (ok or clean)
    env: int = 0                 # workers killed while a library they had mapped was rewritten in place
    seconds: float = 0.0
    findings: list[str] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)

    def line(self) -> str:
        rate = self.inputs / self.seconds if self.seconds else 0.0
        return (f"{self.target}: {self.inputs} inputs in {self.seconds:.0f} s ({rate:.0f}/s): ok {self.ok}, "
                f"clean errors {self.clean}{f' (+{self.unsplit} ok or clean)' if self.unsplit else ''}, crashes {self.crashes}, hangs {self.hangs}, leaks {self.leaks}"
                f"{f', environment deaths {self.env}' if self.env else ''}")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def case_rng(seed: int, i: int) -> random.Random:
    """The generator of input i of a campaign: any input can be regenerated from (seed, i) alone."""
    return random.Random(f"{seed}:{i}")


def _worker(conn: Any, target: Target, ctx: dict[str, Any], workdir: str, quiet: bool, current: Any,
            started: Any) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (target.memory, target.memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    fault = open(Path(workdir) / f"fault-{os.getpid()}.txt", "w")   # where a signal's Python stack goes
    faulthandler.enable(fault)
    if quiet:   # llama.cpp and ggml write to stderr from C
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
    clean = target.clean()
    d = Path(workdir) / "case"
    n = 0
    while True:
        msg = conn.recv()
        if msg is None:
            return
        first, seed, items = msg
        counts = {"ok": 0, "clean": 0}
        for j in range(items if isinstance(items, int) else len(items)):
            i = first + j
            current.value, started.value = i, time.monotonic()
            try:
                case = target.generate(case_rng(seed, i), ctx) if isinstance(items, int) else items[j]
                write_case(case, d)
                target.run(d, ctx)
                counts["ok"] += 1
            except clean:
                counts["clean"] += 1
            except BaseException as exc:   # noqa: BLE001 - everything else is a finding
                tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
                conn.send(("finding", i, "crash", "".join(tb[-3:])[-1500:]))   # now: a later input may hang
            finally:
                shutil.rmtree(d, ignore_errors=True)
            n += 1
            if n % 250 == 0:   # before the RSS samples the leak check compares
                gc.collect()
        started.value = 0.0
        conn.send(("done", counts, _rss(), _fds()))


class Worker:
    def __init__(self, target: Target, ctx: dict[str, Any], workdir: str, quiet: bool) -> None:
        mpc = mp.get_context("fork")
        self.conn, child = mpc.Pipe()
        self.current = mpc.Value("q", -1, lock=False)
        self.started = mpc.Value("d", 0.0, lock=False)
        self.proc = mpc.Process(target=_worker, args=(child, target, ctx, workdir, quiet, self.current,
                                                      self.started), daemon=True)
        self.proc.start()
        child.close()
        self.workdir = workdir
        self.done = 0
        self.base: tuple[int, int] | None = None
        self.mapped = MappedFiles()

    def fault_stack(self) -> str:
        """what faulthandler wrote when the worker died of a signal (its innermost frames)"""
        try:
            text = (Path(self.workdir) / f"fault-{self.proc.pid}.txt").read_text()
        except OSError:
            return ""
        return "\n" + "\n".join(text.strip().splitlines()[:8])

    def died(self) -> str:
        return f"worker died (exit code {self.proc.exitcode}) at input {self.current.value}{self.fault_stack()}"

    def run(self, first: int, seed: int, items: int | list[Case], timeout: float) -> tuple[Any, ...]:
        """('batch', counts, findings, rss, fds), or ('hang' | 'died', index of the input, detail, findings)."""
        self.conn.send((first, seed, items))
        findings: list[tuple[int, str, str]] = []
        while True:
            if self.conn.poll(0.2):
                try:
                    msg = self.conn.recv()
                except (EOFError, ConnectionResetError):
                    self.proc.join(5)
                    return "died", self.current.value, self.died(), findings
                if msg[0] == "finding":
                    findings.append(msg[1:])
                    continue
                _, counts, rss, fds = msg
                self.mapped.sample(self.proc.pid)
                return "batch", counts, findings, rss, fds
            t = self.started.value
            if t and time.monotonic() - t > timeout:
                return "hang", self.current.value, f"no answer in {timeout:.0f} s", findings
            if not self.proc.is_alive() and not self.conn.poll(0):
                self.proc.join(5)
                return "died", self.current.value, self.died(), findings

    def stop(self) -> None:
        try:
            if self.proc.is_alive():
                self.conn.send(None)
                self.proc.join(2)
        except (BrokenPipeError, OSError):
            pass
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def save_case(target: str, case: Case, kind: str, detail: str, corpus: Path = CORPUS) -> Path:
    blob = json.dumps({n: base64.b64encode(b).decode() for n, b in sorted(case.items())}, sort_keys=True)
    digest = hashlib.sha1(blob.encode()).hexdigest()[:16]
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{digest}.json"
    p.write_text(json.dumps({"target": target, "kind": kind, "detail": detail,
                             "files": json.loads(blob)}, indent=1) + "\n")
    return p


def load_case(path: Path) -> Case:
    doc = json.loads(path.read_text())
    return {n: base64.b64decode(b) for n, b in doc["files"].items()}


def campaign(target: Target, *, seconds: float | None = None, inputs: int | None = None, seed: int = 0,
             save: bool = True, corpus: Path = CORPUS, quiet: bool = True, progress: bool = False,
             cases: list[Case] | None = None) -> Stats:
    """Run `inputs` generated inputs (or for `seconds`), or the given `cases`, through the target."""
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{target.name}-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    stats = Stats(target.name)
    batch = 1 if target.expensive else 50
    try:
        ctx = target.setup(work / "seeds")
        worker = Worker(target, ctx, str(work), quiet)
        t0 = time.monotonic()
        i = 0
        total = len(cases) if cases is not None else inputs
        while True:
            if total is not None and i >= total:
                break
            if seconds is not None and time.monotonic() - t0 >= seconds:
                break
            n = batch if total is None else min(batch, total - i)
            items: int | list[Case] = n if cases is None else cases[i:i + n]
            res = worker.run(i, seed, items, target.timeout)
            if res[0] == "batch":
                _, counts, findings, rss, fds = res
                stats.inputs += n
                stats.ok += counts["ok"]
                stats.clean += counts["clean"]
                worker.done += n
                for j, kind, detail in findings:
                    _finding(stats, target, kind, detail, _case(target, ctx, seed, j, cases), save, corpus, progress)
                if worker.base is None and worker.done >= LEAK_WARMUP:
                    worker.base = (rss, fds)
                elif worker.base and worker.done % 1000 < n and (
                        rss - worker.base[0] > LEAK_RSS or fds - worker.base[1] > LEAK_FDS):
                    stats.leaks += 1
                    stats.findings.append(f"leak: RSS {worker.base[0] >> 20} -> {rss >> 20} MiB, descriptors "
                                          f"{worker.base[1]} -> {fds} after {worker.done} inputs")
                    worker.base = (rss, fds)
                i += n
                continue
            kind, j, detail, findings = res
            rewritten = worker.mapped.rewritten() if kind == "died" else []
            worker.stop()
            done = j - i + 1        # the inputs before j in this batch ran; their counts are lost with the worker
            stats.inputs += done
            stats.unsplit += done - 1 - len(findings)
            for k, fkind, fdetail in findings:
                _finding(stats, target, fkind, fdetail, _case(target, ctx, seed, k, cases), save, corpus, progress)
            if rewritten and _runs_clean(target, ctx, str(work), quiet, j, seed, cases):
                stats.env += 1
                stats.findings.append(f"environment: {detail.strip().splitlines()[0]} while {', '.join(rewritten)} "
                                      f"was rewritten in place; the input alone in a fresh worker: no crash")
            else:
                _finding(stats, target, "hang" if kind == "hang" else "crash", detail,
                         _case(target, ctx, seed, j, cases), save, corpus, progress)
            i = j + 1
            worker = Worker(target, ctx, str(work), quiet)
        worker.stop()
        stats.seconds = time.monotonic() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return stats


def _runs_clean(target: Target, ctx: dict[str, Any], workdir: str, quiet: bool, i: int, seed: int,
                cases: list[Case] | None) -> bool:
    """input i alone in a fresh worker ends ok or as the target's clean error"""
    worker = Worker(target, ctx, workdir, quiet)
    try:
        res = worker.run(i, seed, 1 if cases is None else [cases[i]], target.timeout)
        return res[0] == "batch" and not res[2]
    finally:
        worker.stop()


def _case(target: Target, ctx: dict[str, Any], seed: int, i: int, cases: list[Case] | None) -> Case:
    return cases[i] if cases is not None else target.generate(case_rng(seed, i), ctx)


def _finding(stats: Stats, target: Target, kind: str, detail: str, case: Case, save: bool, corpus: Path,
             progress: bool) -> None:
    if kind == "crash":
        stats.crashes += 1
    else:
        stats.hangs += 1
    lines = detail.strip().splitlines()
    head = lines[0] if lines and lines[0].startswith("worker died") else lines[-1] if lines else detail
    stats.findings.append(f"{kind}: {head}")
    if save:
        stats.saved.append(str(save_case(target.name, case, kind, detail, corpus)))
    if progress:
        print(f"  {kind}: {detail.strip()[-300:]}", flush=True)
