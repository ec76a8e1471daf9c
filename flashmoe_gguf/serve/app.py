"""The FastAPI app: llama_cpp.server's OpenAI endpoints (/v1/models, /v1/completions, /v1/chat/completions,
/v1/embeddings: its request types, its request preparation, its API-key check, its SSE streaming) on
flashmoe's model, behind the bounded queue; plus GET /health and GET /metrics.

llama_cpp.server's own route functions are not reused as they are: they read the model from a module global
(and its create_app builds a stock LlamaProxy that would load the model with llama_cpp.Llama), queue without
bound, start a stream's 200 before the model has run (so an error cannot have its status code), and keep
generating a non-streamed answer after its client left. Everything the app needs lives in one Service object
made here: no module state.
"""

from __future__ import annotations

import base64
import struct
from typing import Any, Callable, Coroutine, Optional

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute, APIRouter
from llama_cpp.server.app import authenticate, get_server_settings, prepare_request_resources
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .checks import check_logit_bias, check_prompt
from .errors import response_for
from .gate import Gate
from .loader import chat_handler
from .metrics import CONTENT_TYPE, RequestCounters, exposition
from .model import ServedLlama
from .proxy import ModelProxy
from .schema import ChatRequest, CompletionRequest, EmbeddingRequest
from .service import Service, StopSignal, until_disconnect
from .settings import FlashMoeServerSettings
from .streaming import HeldEventSource, HeldStream, stream_head

ENDPOINTS = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/health", "/metrics")
CLIENT_GONE = 499       # nginx's "client closed request": logged and counted, never received


class OpenAIRoute(APIRoute):
    """Routes whose every failure (invalid body included) is an OpenAI-style error response (errors.py)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return response_for(exc, getattr(request.state, "openai_body", None))

        return guarded


class CountResponses:
    """ASGI middleware: counts responses by endpoint and status code."""

    def __init__(self, app: ASGIApp, counters: RequestCounters) -> None:
        self.app, self.counters = app, counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            path = scope.get("path", "")
            self.counters.response(path if path in ENDPOINTS else "other", status or 500)


def chat_completion(llama: ServedLlama, kwargs: dict[str, Any], template_kwargs: Optional[dict[str, Any]],
                    parallel_tool_calls: Optional[bool]) -> Any:
    """Llama.create_chat_completion, or, for what it has no argument for (chat_template_kwargs,
    parallel_tool_calls), the chat handler it would call: flashmoe's takes both; llama-cpp-python's (a chat_format
    chosen in the settings) gets the template variables as keyword arguments, as llama_cpp.server gives them."""
    if template_kwargs is None and parallel_tool_calls is None:
        return llama.create_chat_completion(**kwargs)
    from ..chat import ChatHandler
    handler = chat_handler(llama)
    if isinstance(handler, ChatHandler):
        extra: dict[str, Any] = {"chat_template_kwargs": template_kwargs}
        if parallel_tool_calls is not None:
            extra["parallel_tool_calls"] = parallel_tool_calls
    else:
        extra = dict(template_kwargs or {})
    return handler(llama=llama, **kwargs, **extra)


def _base64_floats(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _routes(service: Service, ping_s: Optional[float]) -> APIRouter:
    router = APIRouter(route_class=OpenAIRoute)
    proxy, counters = service.proxy, service.counters
    auth = [Depends(authenticate)]

    async def answer(request: Request, alias: Optional[str], work: Callable[[ServedLlama], Any]) -> Response:
        stop = StopSignal()

        async def body() -> Any:
            turn = await service.begin(alias, stop)
            try:
                return await turn.run(work, turn.llama)
            finally:
                turn.end()

        result, gone = await until_disconnect(request, stop, body)
        if gone:
            counters.disconnects += 1
            return Response(status_code=CLIENT_GONE)
        return JSONResponse(result)

    async def stream(request: Request, alias: Optional[str], start: Callable[[ServedLlama], Any]) -> Response:
        stop = StopSignal()

        async def body() -> HeldStream:
            turn = await service.begin(alias, stop)
            iterator = None
            try:
                iterator = await turn.run(start, turn.llama)
                head = await turn.run(stream_head, iterator)
            except BaseException:
                if iterator is None:
                    turn.end()
                else:                    # close the iterator (in the worker) and end the turn
                    await HeldStream(turn, iterator, []).finish()
                raise
            return HeldStream(turn, iterator, head)

        held, gone = await until_disconnect(request, stop, body)
        if gone:
            counters.disconnects += 1
            if held is not None:
                await held.finish()
            return Response(status_code=CLIENT_GONE)
        assert held is not None
        return HeldEventSource(held, ping_s)

    @router.get("/v1/models", dependencies=auth, summary="Models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": alias, "object": "model", "created": 0, "owned_by": "flashmoe",
                                            "permissions": []} for alias in proxy]}

    @router.post("/v1/chat/completions", dependencies=auth, summary="Chat")
    async def chat(request: Request, body: ChatRequest) -> Response:
        request.state.openai_body = body
        kwargs = {**body.llama_kwargs(), "model": proxy.alias_for(body.model)}   # answers name the model used

        def work(llama: ServedLlama) -> Any:
            check_logit_bias(llama, body.logit_bias, body.logit_bias_type)
            prepare_request_resources(body, lambda _alias: llama, body.model, kwargs)  # type: ignore[arg-type]
            return chat_completion(llama, kwargs, body.chat_template_kwargs, body.parallel_tool_calls)

        return await (stream if body.stream else answer)(request, body.model, work)

    @router.post("/v1/completions", dependencies=auth, summary="Completion")
    async def completion(request: Request, body: CompletionRequest) -> Response:
        request.state.openai_body = body
        kwargs = {**body.llama_kwargs(), "model": proxy.alias_for(body.model)}

        def work(llama: ServedLlama) -> Any:
            check_logit_bias(llama, body.logit_bias, body.logit_bias_type)
            check_prompt(llama, body.prompt_text())
            prepare_request_resources(body, lambda _alias: llama, body.model, kwargs)  # type: ignore[arg-type]
            return llama.create_completion(**kwargs)

        return await (stream if body.stream else answer)(request, body.model, work)

    @router.post("/v1/embeddings", dependencies=auth, summary="Embedding")
    async def embeddings(request: Request, body: EmbeddingRequest) -> Response:
        def work(llama: ServedLlama) -> Any:
            if not llama.context_params.embeddings:
                raise ValueError(f"model {proxy.alias_for(body.model)!r} is not served with "
                                 "embeddings: start flashmoe serve with --embedding, or set \"embedding\": true "
                                 "for it in the config file")
            result = llama.create_embedding(input=body.input, model=proxy.alias_for(body.model))
            if body.encoding_format == "base64":
                for item in result["data"]:
                    item["embedding"] = _base64_floats(item["embedding"])
            return result

        return await answer(request, body.model, work)

    @router.get("/health", summary="Model status")
    async def health() -> JSONResponse:
        st = await anyio.to_thread.run_sync(proxy.status)
        if st.failure is not None and not st.loaded:
            state = "failed"
        elif st.loaded:
            state = "ok"
        else:
            state = "loading" if st.swapping else "unloaded"
        body: dict[str, Any] = {
            "status": state, "model": st.alias, "model_path": st.path, "loaded": st.loaded, "error": st.failure,
            "queue": {"active": int(service.gate.active), "waiting": service.gate.waiting,
                      "capacity": service.gate.capacity},
            "models": st.aliases,
        }
        if state == "failed":
            body["action"] = "the model must be reloaded: the server loads it again for the next request"
        if st.stats is not None:
            body["flashmoe"] = {k: st.stats[k] for k in ("ram_budget", "cache_bytes", "cache_hit_rate",
                                                         "expert_bytes_read", "kernel_isa", "direct_io")}
        return JSONResponse(body, status_code=200 if state == "ok" else 503)

    @router.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> PlainTextResponse:
        st = await anyio.to_thread.run_sync(proxy.status)
        return PlainTextResponse(exposition(st, service.gate, counters), media_type=CONTENT_TYPE)

    return router


def build_app(server: FlashMoeServerSettings, proxy: ModelProxy) -> tuple[FastAPI, Service]:
    """The app serving `proxy`'s models with `server`'s settings, and the Service behind it."""
    import llama_cpp
    service = Service(proxy, Gate(server.queue), RequestCounters())
    app = FastAPI(title="flashmoe serve (llama-cpp-python's OpenAI API)", version=llama_cpp.__version__,
                  root_path=server.root_path)
    app.dependency_overrides[get_server_settings] = lambda: server      # llama_cpp.server's API-key check
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_credentials=True, allow_methods=["*"],
                       allow_headers=["*"])
    app.add_middleware(CountResponses, counters=service.counters)

    async def http_error(request: Request, exc: Exception) -> Response:
        return response_for(exc)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, http_error)
    app.include_router(_routes(service, 0 if server.disable_ping_events else None))
    return app, service
