"""`flashmoe pull OWNER/REPO[:QUANT]`: download one quant of a GGUF repository from the Hugging Face hub, as
`ollama pull` and `llama-server -hf` do.

A GGUF repository holds several models: one file per quant (`Qwen3-30B-A3B-Q4_K_M.gguf`), or shard sets
(`Q4_K_M/Qwen3.5-397B-A17B-Q4_K_M-00001-of-00006.gguf` ...), often one folder per quant, next to vision
projectors (`mmproj-*.gguf`) and READMEs. `pull` lists the repository, picks the model whose quant label is
QUANT (or the only model there is), downloads exactly its files with huggingface_hub (resumable, with progress,
honouring HF_ENDPOINT, HF_TOKEN and the usual settings), checks that a shard set is complete, and gives the path
to pass to `flashmoe run` (the first shard of a split model). `--repack` then rewrites it in the streaming
layout (repack.py).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .gguf_index import GGUFIndexError, read_model

_SHARD = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
# llama.cpp quant labels as they appear in file names: Q4_K_M, IQ4_XS, UD-Q2_K_XL, Q8_0, BF16, MXFP4_MOE, ...
_QUANT = re.compile(r"(?i)(?<![a-z0-9])((?:ud-)?(?:i?q\d(?:_[a-z0-9]+)*|tq\d_\d|bf16|f16|f32|mxfp4(?:_moe)?))(?![a-z0-9])")


STATE_DIR = ".flashmoe-pull"      # partial downloads and what is known of each downloaded file


class PullError(Exception):
    """The repository, the quant or the download failed."""


@dataclass(frozen=True)
class RemoteModel:
    files: tuple[str, ...]      # repository paths, shards in order
    quant: str                  # the label in its name ("" if none)
    missing: tuple[int, ...] = ()   # shard numbers the repository lacks (an incomplete set)

    @property
    def first(self) -> str:
        return self.files[0]


def remote_models(files: list[str]) -> list[RemoteModel]:
    """The GGUF models in a repository's file list: single files and complete shard sets (projectors skipped)."""
    singles, sets = [], {}
    for f in files:
        name = f.rsplit("/", 1)[-1]
        if not name.endswith(".gguf") or name.lower().startswith("mmproj"):
            continue
        m = _SHARD.match(name)
        if m:
            key = (f[: len(f) - len(name)] + m.group("prefix"), int(m.group("count")))
            sets.setdefault(key, {})[int(m.group("no"))] = f
        else:
            singles.append(f)
    out = [RemoteModel((f,), _label(f)) for f in singles]
    for (prefix, count), shards in sets.items():
        missing = tuple(sorted(set(range(1, count + 1)) - set(shards)))
        out.append(RemoteModel(tuple(shards[i] for i in sorted(shards)), _label(prefix), missing))
    return sorted(out, key=lambda m: m.first)


def safe_path(name: str) -> bool:
    """A repository path that stays inside the download directory."""
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name and ":" not in name


def _label(path: str) -> str:
    found = _QUANT.findall(path.rsplit("/", 1)[-1]) or _QUANT.findall(path)
    return found[-1].upper() if found else ""


def choose(models: list[RemoteModel], quant: str | None, repo: str) -> RemoteModel:
    if not models:
        raise PullError(f"{repo}: no GGUF model in the repository")
    labels = ", ".join(sorted({m.quant or m.first for m in models}))
    if not quant:
        if len(models) == 1:
            return models[0]
        raise PullError(f"{repo} has {len(models)} GGUF models: choose one with {repo}:QUANT ({labels})")
    exact = [m for m in models if m.quant == quant.upper()]
    if len(exact) == 1:
        return exact[0]
    loose = [m for m in models if quant.lower() in m.first.lower()]
    if len(exact) > 1 or (not exact and len(loose) > 1):
        raise PullError(f"{repo}: {quant!r} names several models: " + ", ".join(m.first for m in (exact or loose)))
    if not loose:
        raise PullError(f"{repo}: no {quant} model (available: {labels})")
    return loose[0]


def _complete(model: RemoteModel, repo: str) -> RemoteModel:
    if model.missing:
        raise PullError(f"{repo}: the shard set {model.first} is incomplete in the repository "
                        f"(missing shard{'s' if len(model.missing) > 1 else ''} {', '.join(map(str, model.missing))})")
    bad = [f for f in model.files if not safe_path(f)]
    if bad:
        raise PullError(f"{repo}: refusing a file path that leaves the download directory: {bad[0]!r}")
    return model


def pull(spec: str, out_dir: str | Path, revision: str | None = None, progress: bool = True,
         endpoint: str | None = None, token: str | None = None) -> Path:
    """Download OWNER/REPO[:QUANT] into out_dir; the local path of the model (its first shard).

    endpoint and token default to huggingface_hub's (HF_ENDPOINT, HF_TOKEN, the stored login)."""
    repo, _, quant = spec.partition(":")
    if not re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", repo):
        raise PullError(f"{spec}: not OWNER/REPO[:QUANT]")
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise PullError("huggingface_hub is needed to download models") from exc
    try:
        files = HfApi(endpoint=endpoint, token=token).list_repo_files(repo, revision=revision)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise PullError(f"{repo}: repository or revision not found on the hub (a private or gated one needs HF_TOKEN)") from exc
    except _network_errors() as exc:
        raise PullError(f"{repo}: cannot list the repository: {_one_line(exc)}") from exc
    model = _complete(choose(remote_models(files), quant or None, repo), repo)
    out = Path(out_dir)
    local = [_download(repo, f, out, revision, endpoint, token, progress) for f in model.files]
    try:                                   # what arrived is the model: a GGUF, every shard present and consistent
        read_model(local[0])
    except GGUFIndexError as exc:
        raise PullError(f"{repo}: downloaded {model.first} is not a usable GGUF: {exc}") from exc
    return local[0]


def _download(repo: str, name: str, out: Path, revision: str | None, endpoint: str | None, token: str | None,
              progress: bool) -> Path:
    """One repository file to out/name, resumable across runs.

    huggingface_hub resumes a transfer broken within one call but deletes the partial file when it gives up; a
    shard set of hundreds of GB needs more. Bytes go to `out/.flashmoe-pull/name.part`, with the file's ETag in
    `name.json` beside it: a later pull continues from the end of `.part` (an HTTP Range request) if the ETag is
    unchanged and starts over if not. The file appears under its name only complete (size checked, flushed,
    renamed); its ETag, size and mtime are kept, so a later pull skips it while the hub's file is the same and
    downloads it again when it changed. A file put there by other means is kept if its size is the hub's."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    dest = out / name
    state = out / STATE_DIR / name
    part, info = state.with_name(state.name + ".part"), state.with_name(state.name + ".json")
    url = hf_hub_url(repo, name, revision=revision, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
    except _network_errors() as exc:
        raise PullError(f"{repo}: cannot reach {name}: {_one_line(exc)}") from exc
    if meta.size is None or meta.etag is None:
        raise PullError(f"{repo}: the hub gave no size or ETag for {name}")
    known = _read_json(info)
    if dest.is_file() and dest.stat().st_size == meta.size:
        st = dest.stat()
        if not known or (known.get("etag") == meta.etag and known.get("mtime_ns") == st.st_mtime_ns):
            return dest
    try:
        state.parent.mkdir(parents=True, exist_ok=True)
        resume = 0
        if part.is_file() and known.get("etag") == meta.etag and not known.get("complete"):
            resume = min(part.stat().st_size, meta.size)
        free = shutil.disk_usage(state.parent).free
        if free < meta.size - resume:
            raise PullError(f"{repo}: {name} needs {_gb(meta.size - resume)} more on {out}, {_gb(free)} free")
        _write_json(info, {"etag": meta.etag, "size": meta.size, "complete": False})
        with open(part, "r+b" if resume else "wb") as f:
            f.seek(resume)
            f.truncate()
            http_get(meta.location, f, resume_size=resume, expected_size=meta.size, displayed_filename=name,
                     headers=build_hf_headers(token=token), **_quiet(http_get, progress))
            f.flush()
            os.fsync(f.fileno())
        got = part.stat().st_size
        if got != meta.size:
            raise PullError(f"{repo}: {name}: received {got} bytes of {meta.size} (run again to resume)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)
        _write_json(info, {"etag": meta.etag, "size": meta.size, "complete": True,
                           "mtime_ns": dest.stat().st_mtime_ns})
    except _network_errors() as exc:
        raise PullError(f"{repo}: download of {name} failed (run again to resume): {_one_line(exc)}") from exc
    return dest


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def streaming_name(first: Path) -> Path:
    """Where `pull --repack` writes the streaming copy of a downloaded model: beside it, `NAME-streaming.gguf`
    (NAME without the shard suffix)."""
    m = _SHARD.match(first.name)
    stem = m.group("prefix") if m else first.name.removesuffix(".gguf")
    return first.with_name(stem + "-streaming.gguf")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _quiet(http_get: Any, progress: bool) -> dict[str, Any]:
    """http_get's arguments for no progress bar (its tqdm_class, where this huggingface_hub has one)."""
    if progress or "tqdm_class" not in inspect.signature(http_get).parameters:
        return {}
    from tqdm.auto import tqdm

    class Hidden(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
    return {"tqdm_class": Hidden}


def _network_errors() -> tuple[type[BaseException], ...]:
    """The exceptions huggingface_hub lets through for a failed transfer: OSError, its HTTP errors, and its HTTP
    client's (httpx2 in huggingface_hub 2.x, httpx before) transport errors."""
    from huggingface_hub.errors import HfHubHTTPError
    errors: list[type[BaseException]] = [HfHubHTTPError, OSError]
    for client in ("httpx2", "httpx"):
        try:
            errors.append(__import__(client).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
