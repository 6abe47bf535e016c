"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for the fixer tests (http.server, threads).

It answers ``POST /v1/chat/completions`` with ``"Fixed: <paragraph>"`` and usage counted in words, and
misbehaves on purpose when the paragraph (the last message) contains a marker:

``FAIL500``   always HTTP 500;          ``FLAKY<n>``  HTTP 500 on the first n requests for it, then fine;
``DROP``      closes the connection without answering;   ``SLOW``  sleeps ``slow_seconds`` then answers;
``EMPTY``     an empty reply;           ``SORRY``     answers "I apologize for that. ..."
``STATUS<nnn>`` HTTP nnn (e.g. STATUS401);
``CORRECT``   "... already correct.";   ``NOREPEAT``  "... already correct, there is no repetition."
``UNFINISHED`` "... incomplete ..."

With ``backend`` (a function of the request's messages, e.g. a local Hugging Face causal LM) the replies
come from it instead of the canned ``"Fixed: ..."``, one request at a time. It records every request (paragraph, Authorization header), the number in flight at most, and answers
``GET /v1/models`` with an empty list.
"""
from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep the test output quiet
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": []})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self):
        server = self.server
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, {"error": {"message": "not found"}})
            return
        paragraph = body["messages"][-1]["content"]
        self.messages = body["messages"]
        with server.lock:
            server.requests.append({"paragraph": paragraph, "auth": self.headers.get("Authorization"),
                                    "messages": body["messages"], "model": body.get("model")})
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            seen = sum(r["paragraph"] == paragraph for r in server.requests)
        try:
            self._answer(paragraph, seen)
        finally:
            with server.lock:
                server.in_flight -= 1

    def _answer(self, paragraph: str, seen: int) -> None:
        server = self.server
        time.sleep(server.delay)
        status = re.search(r"STATUS(\d{3})", paragraph)
        if status:
            self._send(int(status.group(1)), {"error": {"message": "refused on purpose", "type": "test"}})
            return
        if "FAIL500" in paragraph:
            self._send(500, {"error": {"message": "internal error on purpose", "type": "server_error"}})
            return
        flaky = re.search(r"FLAKY(\d+)", paragraph)
        if flaky and seen <= int(flaky.group(1)):
            self._send(500, {"error": {"message": "flaky on purpose", "type": "server_error"}})
            return
        if "DROP" in paragraph:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if "SLOW" in paragraph:
            time.sleep(server.slow_seconds)
        if server.backend is not None:
            with server.lock_backend:
                reply = server.backend(self.messages)
        elif "EMPTY" in paragraph:
            reply = ""
        elif "SORRY" in paragraph:
            reply = "I apologize for that. " + paragraph
        elif "NOREPEAT" in paragraph:
            reply = "The paragraph is already correct, there is no repetition."
        elif "CORRECT" in paragraph:
            reply = "The input paragraph is already correct."
        elif "UNFINISHED" in paragraph:
            reply = "The last sentence is incomplete and cannot be rewritten."
        else:
            reply = "Fixed: " + paragraph
        self._send(200, {
            "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": "test",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
            "usage": {"prompt_tokens": len(paragraph.split()), "completion_tokens": len(reply.split()),
                      "total_tokens": len(paragraph.split()) + len(reply.split())}})


class ChatServer:
    """``with ChatServer() as server: server.base_url`` (``http://127.0.0.1:<port>/v1``)."""

    def __init__(self, delay: float = 0.0, slow_seconds: float = 2.0, backend=None):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.lock = threading.Lock()
        self.httpd.requests, self.httpd.in_flight, self.httpd.max_in_flight = [], 0, 0
        self.httpd.delay, self.httpd.slow_seconds = delay, slow_seconds
        self.httpd.backend, self.httpd.lock_backend = backend, threading.Lock()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def requests(self) -> list[dict]:
        return self.httpd.requests

    @property
    def max_in_flight(self) -> int:
        return self.httpd.max_in_flight

    def count(self, marker: str) -> int:
        return sum(marker in r["paragraph"] for r in self.requests)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":  # a server to try the fixer by hand: python tests/openai_test_server.py
    with ChatServer() as srv:
        print(srv.base_url, flush=True)
        threading.Event().wait()
