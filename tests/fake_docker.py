"""A fake Docker Engine API on a unix socket, for docker-SDK unit tests without a daemon.

    with FakeDockerEngine(exit_code=0, logs=b"done\\n") as engine:
        client = engine.client()                      # docker.DockerClient(version="1.41")
        client.containers.run("img:latest", "true", detach=True).wait()
        create = engine.last("POST", "/containers/create")
        assert create.json["HostConfig"]["Binds"] == [...]

Every request is recorded (`engine.requests`: method, path without the `/v1.xx` prefix,
query, parsed JSON body). Behaviour is configurable per engine:
- `exit_code`, `logs` (bytes on stdout) and `stderr` (bytes);
- `run_seconds`: how long `wait` blocks (a `kill` ends it early with exit code 137);
- `on_start(engine, container)`: called when a container starts — e.g. write files into
  its bind-mounted host folders to play the container's part;
- `images`: tags `GET /images/{name}/json` knows (None: every name exists);
- `fail`: {(METHOD, route): (status, message)} to make a route answer with an API error,
  e.g. {("POST", "/containers/create"): (500, "could not select device driver")}.
Routes: /_ping, /version, /info, /images/{name}/json, /containers/create,
/containers/{id}/{json,start,wait,kill,stop,logs}, DELETE /containers/{id}; anything else
is recorded and answered 404.
"""

from __future__ import annotations

import json
import os
import re
import socketserver
import struct
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

API_VERSION = "1.41"


@dataclass
class Request:
    method: str
    path: str  # without the /v1.xx prefix
    query: dict[str, list[str]]
    body: bytes
    json: Any = None


@dataclass
class FakeContainer:
    id: str
    name: str
    config: dict[str, Any]
    status: str = "created"
    exit_code: int | None = None
    killed: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def binds(self) -> dict[str, str]:
        """container path → host path, from HostConfig.Binds."""
        out = {}
        for bind in (self.config.get("HostConfig") or {}).get("Binds") or []:
            host, container = bind.split(":")[:2]
            out[container.rstrip("/")] = host
        return out


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True


class FakeDockerEngine:
    def __init__(
        self,
        *,
        exit_code: int = 0,
        logs: bytes = b"",
        stderr: bytes = b"",
        run_seconds: float = 0.0,
        on_start: Callable[[FakeDockerEngine, FakeContainer], None] | None = None,
        images: set[str] | None = None,
        fail: dict[tuple[str, str], tuple[int, str]] | None = None,
    ) -> None:
        self.exit_code = exit_code
        self.logs = logs
        self.stderr = stderr
        self.run_seconds = run_seconds
        self.on_start = on_start
        self.images = images
        self.fail = dict(fail or {})
        self.requests: list[Request] = []
        self.containers: dict[str, FakeContainer] = {}
        self._lock = threading.Lock()
        self._dir = tempfile.mkdtemp(prefix="fake-docker-")
        self.socket_path = os.path.join(self._dir, "docker.sock")
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self) -> FakeDockerEngine:
        engine = self

        class Handler(_Handler):
            fake = engine

        self._server = _Server(self.socket_path, Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        for c in self.containers.values():
            c.done.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        os.rmdir(self._dir)

    def __enter__(self) -> FakeDockerEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self, timeout: int = 30) -> Any:
        import docker

        return docker.DockerClient(base_url=self.base_url, version=API_VERSION, timeout=timeout)

    # inspection -----------------------------------------------------------------------
    def calls(self, method: str | None = None, path: str | None = None) -> list[Request]:
        """Recorded requests; `path` may be a regex matched against the whole path."""
        with self._lock:
            found = list(self.requests)
        return [
            r for r in found
            if (method is None or r.method == method) and (path is None or re.fullmatch(path, r.path))
        ]

    def last(self, method: str, path: str) -> Request:
        hits = self.calls(method, path)
        if not hits:
            raise AssertionError(f"no {method} {path} request; got {[(r.method, r.path) for r in self.requests]}")
        return hits[-1]

    def route_names(self) -> list[str]:
        """Request sequence with container ids replaced by {id}, to assert call order."""
        return [f"{r.method} {re.sub(r'/containers/[0-9a-f]{12,}', '/containers/{id}', r.path)}" for r in self.requests]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeDockerEngine
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # unix sockets have no client address
        pass

    # plumbing ---------------------------------------------------------------------
    def _record(self) -> Request:
        parts = urlsplit(self.path)
        path = re.sub(r"^/v\d+\.\d+", "", unquote(parts.path))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if not length and self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        parsed = None
        if body and "json" in (self.headers.get("Content-Type") or ""):
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        req = Request(self.command, path, parse_qs(parts.query), body, parsed)
        with self.fake._lock:
            self.fake.requests.append(req)
        return req

    def _read_chunked(self) -> bytes:
        data = b""
        while True:
            size = int(self.rfile.readline().strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return data
            data += self.rfile.read(size)
            self.rfile.readline()

    def _send(self, status: int, payload: Any = None, *, raw: bytes | None = None, content_type: str = "application/json") -> None:
        body = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        try:
            self.send_response(status)
            if status != 204:
                self.send_header("Content-Type", content_type)
            self.send_header("Api-Version", API_VERSION)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. its wait timed out): nothing to answer

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"message": message})

    def _container(self, cid: str) -> FakeContainer | None:
        with self.fake._lock:
            if cid in self.fake.containers:
                return self.fake.containers[cid]
            return next((c for c in self.fake.containers.values() if c.name == cid or c.id.startswith(cid)), None)

    # dispatch ---------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        req = self._record()
        for (method, route), (status, message) in self.fake.fail.items():
            if method == req.method and re.fullmatch(route.replace("{id}", "[^/]+"), req.path):
                self._error(status, message)
                return
        m, p = req.method, req.path
        if p == "/_ping":
            self._send(200, raw=b"OK", content_type="text/plain")
        elif p == "/version":
            self._send(200, {"ApiVersion": API_VERSION, "Version": "20.10.24-fake", "MinAPIVersion": "1.12",
                             "Os": "linux", "Arch": "amd64"})
        elif p == "/info":
            self._send(200, {"ServerVersion": "20.10.24-fake", "Driver": "fake", "Containers": len(self.fake.containers)})
        elif m == "GET" and (im := re.fullmatch(r"/images/(.+)/json", p)):
            name = im.group(1)
            if self.fake.images is not None and name not in self.fake.images:
                self._error(404, f"No such image: {name}")
            else:
                self._send(200, {"Id": "sha256:" + "0" * 64, "RepoTags": [name], "Config": {}})
        elif m == "POST" and p == "/containers/create":
            self._create(req)
        elif cm := re.fullmatch(r"/containers/([^/]+)(?:/(json|start|wait|kill|stop|logs))?", p):
            self._container_route(req, cm.group(1), cm.group(2))
        else:
            self._error(404, f"fake engine: no route for {m} {p}")

    def _create(self, req: Request) -> None:
        image = (req.json or {}).get("Image", "")
        if self.fake.images is not None and image not in self.fake.images:
            self._error(404, f"No such image: {image}")
            return
        cid = uuid.uuid4().hex + uuid.uuid4().hex
        name = (req.query.get("name") or [cid[:12]])[0]
        with self.fake._lock:
            self.fake.containers[cid] = FakeContainer(cid, name, req.json or {})
        self._send(201, {"Id": cid, "Warnings": []})

    def _container_route(self, req: Request, cid: str, action: str | None) -> None:
        c = self._container(cid)
        if c is None:
            self._error(404, f"No such container: {cid}")
            return
        if action is None and req.method == "DELETE":
            with self.fake._lock:
                self.fake.containers.pop(c.id, None)
            c.done.set()
            self._send(204)
        elif action == "json":
            running = c.status == "running"
            self._send(200, {
                "Id": c.id, "Name": "/" + c.name, "Image": c.config.get("Image"),
                "Config": {"Tty": False, **{k: c.config.get(k) for k in ("Image", "Cmd", "Env", "WorkingDir", "User")}},
                "HostConfig": {**(c.config.get("HostConfig") or {}), "LogConfig": {"Type": "json-file", "Config": {}}},
                "State": {"Status": c.status, "Running": running, "ExitCode": c.exit_code or 0},
            })
        elif action == "start":
            c.status = "running"
            if self.fake.on_start is not None:
                self.fake.on_start(self.fake, c)
            if self.fake.run_seconds <= 0:
                self._finish(c, self.fake.exit_code)
            else:
                timer = threading.Timer(self.fake.run_seconds, self._finish, (c, self.fake.exit_code))
                timer.daemon = True
                timer.start()
            self._send(204)
        elif action == "wait":
            c.done.wait()
            self._send(200, {"StatusCode": c.exit_code if c.exit_code is not None else -1, "Error": None})
        elif action in ("kill", "stop"):
            c.killed = True
            self._finish(c, 137)
            self._send(204)
        elif action == "logs":
            frames = b""
            for stream, data in ((1, self.fake.logs), (2, self.fake.stderr)):
                if data:
                    frames += struct.pack(">BxxxL", stream, len(data)) + data
            self._send(200, raw=frames, content_type="application/vnd.docker.raw-stream")
        else:
            self._error(404, f"fake engine: no route for {req.method} {req.path}")

    @staticmethod
    def _finish(c: FakeContainer, code: int) -> None:
        if c.done.is_set():
            return
        c.exit_code = code
        c.status = "exited"
        c.done.set()
