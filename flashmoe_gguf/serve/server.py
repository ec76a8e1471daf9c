"""Running the server: bind, load the model, serve with uvicorn until SIGINT or SIGTERM, close the model.

A signal during the load stops it; during serving, uvicorn's graceful shutdown runs (no new connections, the
running generation stops before its next token, waiting requests get 503), then the model is closed. Either
way `serve` returns the signal's name: no traceback, exit status 0.
"""

from __future__ import annotations

import signal
import socket
import sys
from types import FrameType
from typing import Any, Callable, Optional, TextIO

from .settings import FlashMoeModelSettings, FlashMoeServerSettings

GRACEFUL_SHUTDOWN_S = 10      # uvicorn's wait for open connections after a stop signal
CLOSE_WAIT_S = 60             # then the wait for a worker thread in flight (a long prompt's batch) to end
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(Exception):
    """A stop signal arrived (raised by our handler, outside uvicorn's own)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)


def _raise_stopped(signum: int, frame: Optional[FrameType]) -> None:
    raise Stopped(signum)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket for host:port (0: a free port); OSError (address in use, unknown host) at once."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def _uvicorn_server(app: Any, settings: FlashMoeServerSettings, on_signal: Callable[[], None]) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Optional[FrameType]) -> None:
            on_signal()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, lifespan="off", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                            ssl_keyfile=settings.ssl_keyfile, ssl_certfile=settings.ssl_certfile, log_level="info")
    return Server(config)


def serve(server: FlashMoeServerSettings, models: list[FlashMoeModelSettings], out: TextIO = sys.stderr) -> str:
    """Serve until a stop signal; returns its name. Errors before serving (address in use, a model that does not
    load) are raised."""
    from .app import build_app
    from .proxy import ModelProxy

    sock = bind(server.host, server.port)
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in SIGNALS}
    service = None
    try:
        proxy = ModelProxy(models)
        app, service = build_app(server, proxy)
        host, port = sock.getsockname()[:2]
        scheme = "https" if server.ssl_certfile else "http"
        where = f"[{host}]" if ":" in host else host
        print(f"flashmoe serve: {proxy.alias_for(None)} ({models[0].model}) on {scheme}://{where}:{port}/v1 "
              f"(queue {server.queue})", file=out, flush=True)
        _uvicorn_server(app, server, service.begin_stop).run(sockets=[sock])
        return "shutdown"
    except Stopped as stop:
        return str(stop)
    finally:
        for sig, handler in previous.items():    # a second signal while closing acts as it did before
            signal.signal(sig, handler)
        sock.close()
        if service is not None:
            service.begin_stop()
            if not service.close(CLOSE_WAIT_S):
                print("flashmoe serve: a generation did not stop in time; the model was left open", file=out)
