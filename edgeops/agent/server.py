"""The agent's HTTP/1.1 server: the standard library's ThreadingHTTPServer with a lean handler.

Why not BaseHTTPRequestHandler's own parsing: it runs every request's headers through the email
package and formats a date per response, which costs more than running a small model. This
handler reads the request line and headers with plain byte operations, writes each response with
one send, and keeps connections alive (HTTP/1.1).

Hostile clients cannot stall or crash it: every socket has a timeout, a request must arrive
within --request-timeout as a whole, bodies need a Content-Length within --max-body-bytes, header
count and line length are bounded, and at most --max-connections connections get a thread
(the next one is answered 503 and closed).
"""
from __future__ import annotations

import hmac
import json
import socket
import socketserver
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, NamedTuple

JSON = b"application/json"
MAX_LINE = 8192
MAX_HEADERS = 100
LINGER_BYTES, LINGER_SECONDS = 16 << 20, 2.0  # how much of a refused body is read before closing
REASONS = {200: "OK", 100: "Continue", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
           413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
           422: "Unprocessable Content", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}
_BUSY_BODY = b'{"error":"too many connections","hint":"retry later, or reuse one connection"}'
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % len(_BUSY_BODY)) + _BUSY_BODY


class Response(NamedTuple):
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: bytes = b""  # extra raw header lines, each ending in \r\n
    close: bool = False


def error_response(status: int, error: str, hint: str, extra: bytes = b"", close: bool = False, **fields) -> Response:
    body = json.dumps({"error": error, "hint": hint, **fields}).encode()
    return Response(status, body, JSON, extra, close)


class Route(NamedTuple):
    methods: tuple[bytes, ...]
    handler: str  # name of the app method
    auth: bool


ROUTES = {
    b"/v1/predict": Route((b"POST",), "predict", True),
    b"/v1/feedback": Route((b"POST",), "feedback", True),
    b"/healthz": Route((b"GET", b"HEAD"), "health", False),
    b"/metrics": Route((b"GET", b"HEAD"), "metrics_text", True),
}


class _DateCache:
    """The Date header, formatted once per second (HTTP/1.1 servers with a clock send it)."""

    def __init__(self):
        self.second = -1
        self.line = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.line = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
            self.second = now
        return self.line


_DATE = _DateCache()


class AgentHandler(BaseHTTPRequestHandler):
    """One connection. Subclassed by make_server with the app and the limits as class attributes."""

    protocol_version = "HTTP/1.1"
    app = None  # has predict(body, request_id), feedback(body), health(), metrics_text(), refused(status)
    token: bytes | None = None
    max_body = 1 << 20
    timeout = 10.0  # seconds per socket operation; StreamRequestHandler.setup applies it
    log: Callable[[str], None] = staticmethod(lambda line: None)

    def setup(self) -> None:
        super().setup()
        try:  # small responses must not wait for Nagle's algorithm on a kept-alive connection
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def handle_one_request(self) -> None:
        self.close_connection = True
        try:
            line = self.rfile.readline(MAX_LINE + 1)
        except (TimeoutError, OSError):  # idle keep-alive connection timed out, or the client left
            return
        if not line or line in (b"\r\n", b"\n"):
            return
        try:
            self._serve(line, time.monotonic() + self.timeout)
        except (TimeoutError, socket.timeout):
            self.app.refused(408)
            self._try_send(error_response(408, "the request did not arrive in time",
                                          "send the whole request at once", close=True))
        except (ConnectionError, BrokenPipeError):
            return

    def _try_send(self, response: Response) -> None:
        try:
            self._send(response)
        except OSError:
            pass

    def _serve(self, line: bytes, deadline: float) -> None:
        if len(line) > MAX_LINE:
            return self._refuse(414, "the request line is too long", "use a short URL")
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return self._refuse(400, "not an HTTP/1.x request", "send HTTP/1.1 requests")
        method, target, version = parts
        headers = self._headers(deadline)
        if headers is None:
            return
        connection = headers.get(b"connection", b"").lower()
        keep = connection != b"close" if version != b"HTTP/1.0" else connection == b"keep-alive"
        route = ROUTES.get(target.split(b"?", 1)[0])
        # A refused request's body is not read: the connection stays usable only if it has none.
        bodiless = b"transfer-encoding" not in headers and headers.get(b"content-length", b"0") == b"0"
        if route is None:
            return self._refuse(404, f"no such path: {target[:100].decode('latin-1')}",
                                "the agent serves POST /v1/predict, POST /v1/feedback, GET /healthz, GET /metrics",
                                keep=keep and bodiless)
        if method not in route.methods:
            allow = b"Allow: " + b", ".join(route.methods) + b"\r\n"
            return self._refuse(405, f"{method[:20].decode('latin-1')} is not allowed on this path",
                                f"use {', '.join(m.decode() for m in route.methods)}", extra=allow,
                                keep=keep and bodiless)
        body = b""
        if method == b"POST":
            body = self._body(headers, deadline)
            if body is None:
                return
        if route.auth and self.token is not None and not self._authorized(headers):
            return self._refuse(401, "missing or wrong bearer token",
                                "send the header Authorization: Bearer TOKEN",
                                extra=b'WWW-Authenticate: Bearer realm="edgeops-agent"\r\n', keep=keep)
        if method == b"POST" and not _is_json(headers.get(b"content-type", b"")):
            return self._refuse(415, "the body must be JSON", "send the header Content-Type: application/json",
                                keep=keep)
        after = None
        try:
            if route.handler == "predict":
                response, after = self.app.predict(body, headers.get(b"x-request-id"))
            elif route.handler == "feedback":
                response = self.app.feedback(body)
            else:
                response = getattr(self.app, route.handler)()
        except Exception as exc:  # a bug must cost one request, not the agent
            self.log(f"error: {route.handler} failed: {type(exc).__name__}: {exc}")
            response = error_response(500, "internal error in the agent", "see the agent's log")
        if method == b"HEAD":
            response = response._replace(body=b"", headers=response.headers + b"Content-Length: %d\r\n" % len(response.body))
        if keep and version == b"HTTP/1.0":  # 1.0 clients keep a connection only when told so
            response = response._replace(headers=response.headers + b"Connection: keep-alive\r\n")
        self._send(response, keep=keep, head=method == b"HEAD")
        if after is not None:
            try:
                after()  # telemetry, feedback cache and shadow: after the client has its answer
            except Exception as exc:  # the answer is out; a bookkeeping bug must not cost the connection
                self.log(f"error: recording a request failed: {type(exc).__name__}: {exc}")

    def _headers(self, deadline: float) -> dict[bytes, bytes] | None:
        headers: dict[bytes, bytes] = {}
        for _ in range(MAX_HEADERS + 1):
            line = self.rfile.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                self._refuse(431, "a header line is too long", "send shorter headers")
                return None
            if line in (b"\r\n", b"\n"):
                return headers
            if not line:  # the client closed half-way through the headers
                return None
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                self._refuse(400, "a header line is malformed", "send `Name: value` header lines")
                return None
            headers[name.lower()] = value.strip()
            if time.monotonic() > deadline:
                raise TimeoutError
        self._refuse(431, "too many header lines", f"send at most {MAX_HEADERS} headers")
        return None

    def _body(self, headers: dict[bytes, bytes], deadline: float) -> bytes | None:
        if b"transfer-encoding" in headers:
            self._refuse(411, "chunked bodies are not accepted", "send the body with a Content-Length header")
            return None
        raw = headers.get(b"content-length")
        if raw is None:
            self._refuse(411, "Content-Length is required", "send the body with a Content-Length header")
            return None
        if not raw.isdigit() or len(raw) > 18:
            self._refuse(400, "Content-Length is not a number", "send a valid Content-Length")
            return None
        length = int(raw)
        if length > self.max_body:
            self._refuse(413, f"the body has {length} bytes, more than the limit of {self.max_body}",
                         "send fewer rows per request (the agent's --max-body-bytes sets the limit)")
            self._linger(min(length, LINGER_BYTES), deadline)
            return None
        if headers.get(b"expect", b"").lower() == b"100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        chunks, have = [], 0
        while have < length:
            chunk = self.rfile.read1(length - have)
            if not chunk:  # the client closed before sending what Content-Length promised
                self.close_connection = True
                return None
            chunks.append(chunk)
            have += len(chunk)
            if have < length and time.monotonic() > deadline:
                raise TimeoutError
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _linger(self, limit: int, deadline: float) -> None:
        """Read and drop (part of) a refused body before closing: closing a socket with unread
        input makes the kernel send RST, which can destroy the response before the client reads it."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline = min(deadline, time.monotonic() + LINGER_SECONDS)
            while limit > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(limit, 65536))
                if not chunk:
                    break
                limit -= len(chunk)
        except OSError:
            pass

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        given = headers.get(b"authorization", b"")
        scheme, _, credential = given.partition(b" ")
        # compare_digest: the time taken does not reveal how much of the token matched.
        return scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), self.token)

    def _refuse(self, status: int, error: str, hint: str, extra: bytes = b"", keep: bool = False) -> None:
        self.app.refused(status)
        self._send(error_response(status, error, hint, extra), keep=keep)

    def _send(self, response: Response, keep: bool = False, head: bool = False) -> None:
        close = response.close or not keep
        head_lines = (b"HTTP/1.1 %d %s\r\n" % (response.status, REASONS.get(response.status, "").encode())
                      + _DATE.get() + b"Content-Type: " + response.content_type + b"\r\n"
                      + (b"" if head else b"Content-Length: %d\r\n" % len(response.body))
                      + response.headers + (b"Connection: close\r\n\r\n" if close else b"\r\n"))
        self.wfile.write(head_lines + response.body)
        self.close_connection = close

    def log_message(self, format, *args) -> None:  # noqa: A002 -- the base class's signature
        pass  # no access log: one line per request would drown the events that matter


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


class AgentHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stopping must not wait for idle keep-alive connections
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, address, handler, max_connections: int, log: Callable[[str], None]):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._slots = threading.BoundedSemaphore(max_connections)
        self._log = log
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up in DNS (getfqdn): slow or hanging on a
        # device without a resolver, and not needed.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # cannot start a thread: out of resources
            self._slots.release()
            self.shutdown_request(request)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        import sys

        exc = sys.exc_info()[1]
        self._log(f"error: request from {client_address[0]} failed: {type(exc).__name__}: {exc}")


def make_server(app, host: str, port: int, *, token: str | None, max_body: int, timeout: float,
                max_connections: int, log: Callable[[str], None]) -> AgentHTTPServer:
    handler = type("BoundAgentHandler", (AgentHandler,), {
        "app": app, "token": token.encode() if token else None, "max_body": max_body, "timeout": timeout,
        "log": staticmethod(log)})
    return AgentHTTPServer((host, port), handler, max_connections, log)
