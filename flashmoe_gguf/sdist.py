"""Fetch the pinned llama-cpp-python source package (its ggml headers and its vocabulary files).

`pip download` first (it honours the user's index configuration and mirrors); if pip fails, PyPI's JSON API
gives the sdist's URL and sha256, and the download is checked against it. Used by the extension
build (ggml_ext/build_ffi.py, which loads this file by path) and by the tiny test checkpoints (tiny.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
PACKAGE = "llama-cpp-python"


def _from_pypi(dest: Path, version: str) -> Path:
    with urllib.request.urlopen(f"https://pypi.org/pypi/{PACKAGE}/{version}/json", timeout=60) as r:
        meta = json.load(r)
    sdist = next(u for u in meta["urls"] if u["packagetype"] == "sdist")
    out = dest / sdist["filename"]
    tmp = out.with_name(out.name + f".partial-{os.getpid()}")
    h = hashlib.sha256()
    with urllib.request.urlopen(sdist["url"], timeout=600) as r, open(tmp, "wb") as f:
        while chunk := r.read(1 << 20):
            h.update(chunk)
            f.write(chunk)
    if h.hexdigest() != sdist["digests"]["sha256"]:
        tmp.unlink()
        raise RuntimeError(f"{sdist['filename']}: sha256 mismatch")
    os.replace(tmp, out)
    return out


def _from_pip(dest: Path, version: str) -> Path:
    # a clean environment: inside a PEP 517 build, PYTHONPATH points at the isolated build env
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PIP_BUILD_TRACKER")}
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--no-binary", PACKAGE,
                    "-d", str(dest), f"{PACKAGE}=={version}"], check=True, env=env, stdout=subprocess.DEVNULL)
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        raise RuntimeError("pip download produced no sdist")
    return found[0]


def download_sdist(dest: Path, version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """The sdist archive in dest (downloaded once)."""
    dest.mkdir(parents=True, exist_ok=True)
    have = dest / f"llama_cpp_python-{version}.tar.gz"
    if have.exists():
        return have
    try:
        return _from_pip(dest, version)
    except (subprocess.CalledProcessError, OSError, RuntimeError) as first:
        try:
            return _from_pypi(dest, version)
        except (urllib.error.URLError, OSError, StopIteration, KeyError, ValueError) as second:
            raise RuntimeError(f"cannot download {PACKAGE}=={version}: pip: {first}; PyPI: {second}") from second
