"""`flashmoe demo` (the README's first command) runs through and shows flashmoe's text equal to stock's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import cache_root


def test_demo(tmp_path: Path) -> None:
    import os
    env = dict(os.environ, FLASHMOE_CACHE=str(cache_root() / "demo"))
    r = subprocess.run([sys.executable, "-m", "flashmoe_gguf.cli", "demo"], capture_output=True, text=True,
                       timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "streams: yes" in r.stdout and "(identical;" in r.stdout, r.stdout
