"""A small real HTTP server for the remote backend's failure tests: it answers each path
with the responses a test scripts (status, JSON body, an optional delay before the
headers) and records every request it got. What a real model server does well is tested
against llama_cpp.server; this one produces, on demand, the failures such a server or a
gateway in front of it produces (503, 500, silence), and what a hostile or broken one
sends (a redirect, endless or oversized streams: `Reply.write`)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    delay_s: float = 0.0
    # Server-sent events: each item one `data:` line, then `data: [DONE]`.
    events: list[Any] | None = None
    # False: the stream just ends, without `data: [DONE]` (a server that dropped it).
    done: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    # Writes the whole body after the headers (200, text/event-stream) to the socket's
    # file, however it likes: forever, in one endless line ...
    write: Callable[[Any], None] | None = None


@dataclass
class Script:
    # Per path (e.g. "/v1/models"): replies used in order, the last one repeated.
    replies: dict[str, list[Reply]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, method: str, path: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r == (method, path))

    def reply(self, path: str) -> Reply:
        with self.lock:
            queue = self.replies.get(path)
            if not queue:
                return Reply(404, {"error": {"message": f"no route {path}"}})
            return queue.pop(0) if len(queue) > 1 else queue[0]


def models(*names: str) -> Reply:
    return Reply(200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]})


@contextmanager
def scripted_server(script: Script) -> Iterator[str]:
    """Serves `script` on a free loopback port; yields the base URL (`.../v1`)."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            with script.lock:
                script.requests.append((self.command, self.path))
            reply = script.reply(self.path)
            if reply.delay_s:
                time.sleep(reply.delay_s)
            try:
                if reply.write is not None:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    reply.write(self.wfile)
                    return
                if reply.events is not None:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for event in reply.events:
                        self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                        self.wfile.flush()
                    if reply.done:
                        self.wfile.write(b"data: [DONE]\n\n")
                    return
                data = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

        do_GET = _answer
        do_POST = _answer

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
