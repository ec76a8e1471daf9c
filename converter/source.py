"""SRC of `flashmoe convert`: a local model directory, or a Hugging Face repo id fetched with huggingface_hub.

Only what the conversion reads is downloaded: config, tokenizer files, safetensors shards and their index.
huggingface_hub resumes interrupted downloads and reuses its cache.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ConversionError

ALLOW_PATTERNS = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "*.safetensors", "model.safetensors.index.json"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_source(src: str | Path, revision: str | None = None, cache_dir: Path | None = None) -> Path:
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConversionError(f"{path} is not a directory (expected a Hugging Face model directory)")
        return path
    s = str(src)
    if not _REPO_ID.match(s):
        raise ConversionError(f"{s}: no such directory, and not a Hugging Face repo id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ConversionError("huggingface_hub is needed to download models") from exc
    try:
        local = snapshot_download(repo_id=s, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                  cache_dir=str(cache_dir) if cache_dir else None)
    except RepositoryNotFoundError as exc:
        raise ConversionError(f"{s}: repository not found on the Hugging Face hub") from exc
    except LocalEntryNotFoundError as exc:
        raise ConversionError(f"{s}: not in the local cache and the hub cannot be reached") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise ConversionError(f"{s}: download failed: {exc}") from exc
    return Path(local)
