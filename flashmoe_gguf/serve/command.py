"""`flashmoe serve`'s arguments -> the server's and the models' settings."""

from __future__ import annotations

import argparse
from typing import Any

from .settings import (
    FlashMoeModelSettings,
    FlashMoeServerSettings,
    ServeError,
    model_settings,
    read_config,
    server_settings,
)

# command-line option -> server setting; given, it overrides the config file's
SERVER_OPTIONS = {"host": "host", "port": "port", "queue": "queue", "api_key": "api_key"}
# command-line option -> model setting; with --config they belong in the file
MODEL_OPTIONS = {"ram_budget": "ram_budget", "ctx": "n_ctx", "cache": "expert_cache", "isa": "isa",
                 "alias": "model_alias", "gpu_layers": "n_gpu_layers", "resident_repack": "resident_repack"}


def _given(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    return {field: getattr(args, opt) for opt, field in names.items() if getattr(args, opt) is not None}


def settings_from_args(args: argparse.Namespace) -> tuple[FlashMoeServerSettings, list[FlashMoeModelSettings]]:
    server_values = _given(args, SERVER_OPTIONS)
    model_values = _given(args, MODEL_OPTIONS)
    if args.threads is not None:
        model_values.update(n_threads=args.threads, n_threads_batch=args.threads)
    if args.embedding:
        model_values["embedding"] = True
    if args.override_tensor:
        model_values["tensor_overrides"] = [f"{p}={b}" for p, b in args.override_tensor]
    if args.config is not None:
        if args.file is not None:
            raise ServeError("give MODEL.gguf or --config FILE, not both (the config file lists the models)")
        if model_values:
            raise ServeError("with --config, model settings (--ram-budget, --ctx, --threads, --cache, --isa, "
                             "--embedding, --alias, --gpu-layers, -ot, --resident-repack) go in the config file")
        config = read_config(args.config)
        base = config.model_dump(exclude={"models"}, exclude_unset=True)
        return server_settings(**{**base, **server_values}), list(config.models)
    if args.file is None:
        raise ServeError("MODEL.gguf (or --config FILE) is required")
    if not args.file.exists():
        raise ServeError(f"{args.file}: no such file")
    return server_settings(**server_values), [model_settings(model=str(args.file), **model_values)]
