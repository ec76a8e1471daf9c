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

import re
from dataclasses import dataclass
from pathlib import Path

_SHARD = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
# llama.cpp quant labels as they appear in file names: Q4_K_M, IQ4_XS, UD-Q2_K_XL, Q8_0, BF16, MXFP4_MOE, ...
_QUANT = re.compile(r"(?i)(?<![a-z0-9])((?:ud-)?(?:i?q\d(?:_[a-z0-9]+)*|tq\d_\d|bf16|f16|f32|mxfp4(?:_moe)?))(?![a-z0-9])")


class PullError(Exception):
    """The repository, the quant or the download failed."""


@dataclass(frozen=True)
class RemoteModel:
    files: tuple[str, ...]      # repository paths, shards in order
    quant: str                  # the label in its name ("" if none)

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
        if sorted(shards) != list(range(1, count + 1)):
            missing = sorted(set(range(1, count + 1)) - set(shards))
            raise PullError(f"{prefix}: shard set of {count} files is incomplete in the repository (missing {missing})")
        out.append(RemoteModel(tuple(shards[i] for i in range(1, count + 1)), _label(prefix)))
    return sorted(out, key=lambda m: m.first)


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


def pull(spec: str, out_dir: str | Path, revision: str | None = None, progress: bool = True) -> Path:
    """Download OWNER/REPO[:QUANT] into out_dir; the local path of the model (its first shard)."""
    repo, _, quant = spec.partition(":")
    if not re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", repo):
        raise PullError(f"{spec}: not OWNER/REPO[:QUANT]")
    try:
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise PullError("huggingface_hub is needed to download models") from exc
    try:
        files = HfApi().list_repo_files(repo, revision=revision)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise PullError(f"{repo}: repository (or revision) not found on the hub") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise PullError(f"{repo}: cannot list the repository: {exc}") from exc
    model = choose(remote_models(files), quant or None, repo)
    out = Path(out_dir)
    (enable_progress_bars if progress else disable_progress_bars)()
    local = []
    for f in model.files:
        try:
            local.append(Path(hf_hub_download(repo, f, revision=revision, local_dir=str(out))))
        except (HfHubHTTPError, OSError) as exc:
            raise PullError(f"{repo}: download of {f} failed (run again to resume): {exc}") from exc
    return local[0]
