"""`flashmoe serve`'s settings without a server: the command line and the config file to settings, the llama
arguments llama_cpp.server would pass, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flashmoe_gguf.cli import build_parser
from flashmoe_gguf.serve.command import settings_from_args
from flashmoe_gguf.serve.loader import CONVERTED, FLASHMOE, PASSED, REFUSED, kv_overrides, llama_arguments
from flashmoe_gguf.serve.settings import FlashMoeModelSettings, ServeError, model_settings, read_config


def args(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(["serve", *argv])


def test_every_llama_cpp_server_setting_is_handled() -> None:
    """A llama-cpp-python upgrade that adds a model setting fails here until the loader decides what to do."""
    handled = set(PASSED) | set(FLASHMOE) | set(CONVERTED) | set(REFUSED)
    assert set(FlashMoeModelSettings.model_fields) == handled
    import inspect

    import llama_cpp
    llama_params = set(inspect.signature(llama_cpp.Llama.__init__).parameters)
    # what llama_cpp.server passes through unknown to Llama (it takes **kwargs) is what it passes too
    assert set(PASSED) - llama_params <= {"rpc_servers", "mul_mat_q"}


def test_command_line(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"")
    server, models = settings_from_args(args(str(model), "--port", "0", "--ram-budget", "2G", "--ctx", "4096",
                                             "--threads", "3", "--cache", "lru", "--isa", "scalar", "--queue", "2"))
    assert (server.host, server.port, server.queue, server.interrupt_requests) == ("127.0.0.1", 0, 2, False)
    (m,) = models
    assert (m.model_alias, m.ram_budget, m.n_ctx, m.n_threads, m.n_threads_batch, m.expert_cache, m.isa) == (
        "m", 2 << 30, 4096, 3, 3, "lru", "scalar")
    kw = llama_arguments(m)
    assert kw["model_path"] == str(model) and kw["cache"] == "lru" and kw["ram_budget"] == 2 << 30
    assert kw["isa"] == "scalar" and kw["n_ctx"] == 4096 and kw["verbose"] is False and kw["logits_all"] is False
    defaults = settings_from_args(args(str(model)))
    assert (defaults[0].port, defaults[0].queue, defaults[1][0].ram_budget) == (8080, 8, "auto")


def test_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "models.json"
    cfg.write_text(json.dumps({"port": 9000, "queue": 3, "models": [
        {"model": "/m/a.gguf", "ram_budget": "8G", "expert_cache": "os", "direct_io": False, "io_threads": 4},
        {"model": "/m/b.gguf", "model_alias": "bee", "isa": "ggml", "n_ctx": 8192, "chat_format": "chatml"}]}))
    server, models = settings_from_args(args("--config", str(cfg), "--port", "9001"))
    assert (server.port, server.queue) == (9001, 3)              # the command line overrides the file
    assert [m.model_alias for m in models] == ["a", "bee"]
    a, b = (llama_arguments(m) for m in models)
    assert (a["ram_budget"], a["cache"], a["direct_io"], a["io_threads"]) == ("8G", "os", False, 4)
    assert (b["isa"], b["n_ctx"], b["chat_format"]) == ("ggml", 8192, "chatml")
    yaml_cfg = tmp_path / "models.yaml"
    yaml_cfg.write_text("models:\n  - model: /m/a.gguf\n    ram_budget: 1G\n")
    assert read_config(yaml_cfg).models[0].ram_budget == "1G"


@pytest.mark.parametrize("content, message", [
    ("{", "not valid JSON"),
    ("[]", "an object with a 'models' list"),
    ('{"models": []}', "models: List should have at least 1 item"),
    ('{"models": [{"model": "/a.gguf", "ram_budget": "lots"}]}', "models.0.ram_budget: not a size"),
    ('{"models": [{"model": "/a.gguf", "expert_cache": "fifo"}]}', "models.0.expert_cache"),
    ('{"models": [{"model": "/a.gguf"}, {"model": "/b/a.gguf"}]}', "several models have the alias a"),
    ('{"interrupt_requests": true, "models": [{"model": "/a.gguf"}]}', "never interrupts"),
])
def test_config_file_errors(tmp_path: Path, content: str, message: str) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(content)
    with pytest.raises(ServeError, match=message) as err:
        read_config(cfg)
    assert "\n" not in str(err.value)


def test_refused_and_converted_settings() -> None:
    with pytest.raises(ServeError, match="flashmoe pull"):
        llama_arguments(model_settings(model="/a.gguf", hf_model_repo_id="x/y"))
    with pytest.raises(ServeError, match="multimodal"):
        llama_arguments(model_settings(model="/a.gguf", clip_model_path="/mmproj.gguf"))
    assert kv_overrides(["a=int:3", "b=bool:true", "c=float:0.5", "d=str:x"]) == {"a": 3, "b": True, "c": 0.5,
                                                                                "d": "x"}
    for bad in ("a=3", "a=int:x", "a=list:3"):
        with pytest.raises(ServeError, match="kv_overrides"):
            kv_overrides([bad])


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text('{"models": [{"model": "/nonexistent.gguf"}]}')
    busy = __import__("socket").socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"not a gguf")
    cases = [
        ([], "MODEL.gguf (or --config FILE) is required"),
        ([str(tmp_path / "missing.gguf")], "no such file"),
        ([str(model), "--config", str(cfg)], "not both"),
        (["--config", str(cfg), "--ctx", "8"], "go in the config file"),
        ([str(model), "--ram-budget", "much"], "not a size"),
        ([str(model), "--port", str(busy.getsockname()[1])], "Address already in use"),
        ([str(model), "--port", "0"], "m.gguf"),                      # not a GGUF: the loader says so
    ]
    try:
        for argv, message in cases:
            r = subprocess.run([sys.executable, "-m", "flashmoe_gguf.cli", "serve", *argv], capture_output=True,
                               text=True, timeout=120)
            assert r.returncode in (1, 2) and message in r.stderr, (argv, r.returncode, r.stderr)
            assert "Traceback" not in r.stderr, r.stderr
            if r.returncode == 1:
                assert r.stderr.startswith("flashmoe serve: error: ") and r.stderr.count("\n") == 1, r.stderr
    finally:
        busy.close()
