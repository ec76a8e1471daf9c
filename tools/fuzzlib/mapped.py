"""The files a worker process has mapped (its interpreter, the ggml extension, libllama, numpy, ...) and whether
one of them was rewritten in place while the worker ran.

A shared library copied over in place (`cp new.so lib.so`, `shutil.copy`: the same inode, truncated and written
again, where an installer or `os.replace` makes a new file) changes the code under every process that has it
mapped: the next call into it runs the new file's bytes at the old addresses and the process dies of SIGSEGV,
SIGILL, SIGBUS or SIGTRAP at whatever input it was running. The runner asks `rewritten()` when a worker dies of a
signal, so that such a death is not filed as a crash of that input."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class FileId:
    dev: int
    ino: int
    size: int
    mtime_ns: int


def _mapped_paths(pid: int) -> dict[str, tuple[int, int]]:
    """path -> (device, inode) of the worker's file-backed mappings, as /proc/PID/maps lists them"""
    out: dict[str, tuple[int, int]] = {}
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except OSError:          # the worker is gone
        return out
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith("/") or parts[5].endswith(" (deleted)"):
            continue        # anonymous, [heap], or a file already replaced or removed (the mapping keeps it)
        major, _, minor = parts[3].partition(":")
        try:
            out[parts[5]] = (os.makedev(int(major, 16), int(minor, 16)), int(parts[4]))
        except ValueError:
            continue
    return out


class MappedFiles:
    """What one worker has mapped, sampled while it lives (after each batch)."""

    def __init__(self) -> None:
        self.files: dict[str, FileId] = {}

    def sample(self, pid: int) -> None:
        for path, (dev, ino) in _mapped_paths(pid).items():
            if path in self.files:
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (dev, ino):     # the file the mapping shows, not a newer one at the path
                self.files[path] = FileId(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def rewritten(self) -> list[str]:
        """the sampled files that are still the same inode but whose size or modification time changed since"""
        changed = []
        for path, fid in sorted(self.files.items()):
            try:
                st = os.stat(path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (fid.dev, fid.ino) and (st.st_size, st.st_mtime_ns) != (fid.size,
                                                                                               fid.mtime_ns):
                changed.append(path)
        return changed
