"""A local stand-in for the Hugging Face hub: a real HTTP server on loopback serving one directory as a model
repository, with the endpoints huggingface_hub's `list_repo_files` and `hf_hub_download` use
(GET /api/models/{repo}/tree/{rev}, GET /api/models/{repo}/revision/{rev}, HEAD/GET /{repo}/resolve/{rev}/{path}
with X-Repo-Commit, ETag, Content-Length and Range).

`cut` makes the server drop the connection of a file's next downloads, one per entry of its list, after that many
bytes of the response, as a network failure would; `requests` records (method, path, Range header) of every request, so a test sees whether a
second download resumed.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

COMMIT = "1" * 40


@dataclass
class FakeHub:
    root: Path
    repo: str = "owner/repo"
    private: bool = False                      # 401 without "Authorization: Bearer secret"
    cut: dict[str, list[int]] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    endpoint: str = ""

    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                hub._serve(self, body=True)

            def do_HEAD(self) -> None:
                hub._serve(self, body=False)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def downloads(self, name: str) -> list[str | None]:
        """The Range header of every GET of a file (None: from the start)."""
        return [r for m, p, r in self.requests if m == "GET" and p.endswith("/" + name)]

    # -- the server --

    def _files(self) -> list[dict[str, object]]:
        out = []
        for p in sorted(self.root.rglob("*")):
            if p.is_file():
                out.append({"type": "file", "path": p.relative_to(self.root).as_posix(), "size": p.stat().st_size,
                            "oid": hashlib.sha1(p.read_bytes()).hexdigest()})
        return out

    def _send(self, h: http.server.BaseHTTPRequestHandler, code: int, data: bytes = b"",
              headers: dict[str, str] | None = None, body: bool = True) -> None:
        h.send_response(code)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body and data:
            h.wfile.write(data)

    def _serve(self, h: http.server.BaseHTTPRequestHandler, body: bool) -> None:
        path = urllib.parse.unquote(h.path.split("?")[0])
        self.requests.append((h.command, path, h.headers.get("Range")))
        if self.private and h.headers.get("Authorization") != "Bearer secret":
            self._send(h, 401, b'{"error":"Invalid credentials"}', {"X-Error-Code": "RepoNotFound",
                       "X-Error-Message": "Repository not found"}, body)
            return
        api = f"/api/models/{self.repo}"
        if path.startswith("/api/models/"):
            if not (path == api or path.startswith(api + "/")):
                self._send(h, 404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)
                return
            rest = path[len(api):]
            if rest.startswith("/tree/"):
                rev = rest[len("/tree/"):].split("/")[0]
                if rev not in ("main", COMMIT):
                    self._send(h, 404, b'{"error":"Revision not found"}', {"X-Error-Code": "RevisionNotFound"}, body)
                    return
                data = json.dumps(self._files()).encode()
            else:
                data = json.dumps({"id": self.repo, "sha": COMMIT,
                                   "siblings": [{"rfilename": f["path"]} for f in self._files()]}).encode()
            self._send(h, 200, data, {"Content-Type": "application/json"}, body)
            return
        pre = f"/{self.repo}/resolve/"
        if not path.startswith(pre):
            self._send(h, 404, b"", {"X-Error-Code": "RepoNotFound"}, body)
            return
        rev, _, name = path[len(pre):].partition("/")
        f = self.root / name
        if rev not in ("main", COMMIT) or not f.is_file():
            self._send(h, 404, b"", {"X-Error-Code": "EntryNotFound" if rev in ("main", COMMIT) else
                                     "RevisionNotFound"}, body)
            return
        data = f.read_bytes()
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[len("bytes="):].split("-")[0])
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                   "Accept-Ranges": "bytes"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        part = data[start:]
        if not body:
            h.send_response(200)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            return
        h.send_response(206 if start else 200)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(part)))
        h.end_headers()
        limit = self.cut[name].pop(0) if self.cut.get(name) else None
        if limit is not None:                  # send part of it and drop the connection
            h.wfile.write(part[:limit])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        h.wfile.write(part)
