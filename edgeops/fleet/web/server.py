"""The fleet dashboard: a stdlib HTTP server for the JSON API (api.py) and four static files.

`edgeops monitor --http HOST:PORT` calls start_dashboard(). The server runs in daemon threads;
ThreadingHTTPServer answers each request in its own thread, and Store objects are single-thread,
so every request opens its own Store and closes it (cheap for SQLite; one short connection for
PostgreSQL at the page's few requests per refresh).

Only the known files (STATIC) are served, read from package data with importlib.resources: a URL never
becomes a file path, so there is nothing to traverse.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import unquote, urlsplit

from edgeops.errors import EdgeOpsError, UsageError
from edgeops.fleet.web import api
from edgeops.fleet.web.query import ApiError, check_device, parse_query, require

log = logging.getLogger(__name__)

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/charts.js": ("charts.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
DEFAULT_STALE_AFTER = 180.0   # three missed 60 s telemetry windows
MAX_TARGET = 4096
# Everything the page needs comes from this server; no inline script, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_DEVICE_PATH = re.compile(r"^/api/devices/([^/]+)$")
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def _load_static() -> dict[str, tuple[bytes, str]]:
    package = resources.files("edgeops.fleet.web")
    return {route: (package.joinpath(name).read_bytes(), ctype) for route, (name, ctype) in STATIC.items()}


def _json_default(value):
    # numpy scalars or Decimals from a database driver: plain numbers in JSON
    if hasattr(value, "item"):
        return value.item()
    return float(value)


def _clean(value):
    """NaN/inf are not JSON: send null (a chart skips the point) instead of invalid output."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class _Handler(BaseHTTPRequestHandler):
    server_version = "edgeops-dashboard"
    timeout = 30  # seconds a connection may sit idle: a slow client cannot hold threads forever
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # Set per server class by start_dashboard().
    store_url: str = ""
    static: dict[str, tuple[bytes, str]] = {}
    mqtt_status: Callable[[], dict] | None = None
    stale_after: float = DEFAULT_STALE_AFTER
    loopback_only: bool = True
    open_store: Callable = staticmethod(lambda url: None)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
        log.debug("%s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, ctype: str, cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        for key, value in SECURITY_HEADERS.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict) -> None:
        body = json.dumps(_clean(payload), default=_json_default, allow_nan=False,
                          separators=(",", ":")).encode()
        self._send(status, body, "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message, "status": status})

    def _host_allowed(self) -> bool:
        """On a loopback bind, only loopback names in Host: a web page the user visits cannot
        rebind its own domain name to 127.0.0.1 and read the fleet's data (DNS rebinding)."""
        host = self.headers.get("Host")
        if not self.loopback_only or host is None:
            return True
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.strip("[]").lower() in LOOPBACK_NAMES

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._host_allowed():
            self._error(403, "this dashboard answers only to 127.0.0.1 / localhost (serve it on another "
                             "address with --http HOST:PORT to reach it by name)")
            return
        if len(self.path) > MAX_TARGET:
            self._error(414, "request target too long")
            return
        parts = urlsplit(self.path)
        path = parts.path
        if path in self.static:
            # A query string on the page (?device=&feature=) is read by app.js, not here.
            body, ctype = self.static[path]
            self._send(200, body, ctype, cache="no-cache")
            return
        if not path.startswith("/api/"):
            self._error(404, f"not found: {path[:100]}")
            return
        try:
            status, payload = self._api(path, parts.query)
        except ApiError as exc:
            self._error(exc.status, exc.message)
            return
        except EdgeOpsError as exc:  # the database is down, locked, of a newer schema...
            log.warning("dashboard request %s: %s", path[:200], exc)
            self._error(503, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - one broken request must not kill the server thread
            log.exception("dashboard request %s failed", path[:200])
            self._error(500, f"internal error: {exc.__class__.__name__}")
            return
        self._json(status, payload)

    do_HEAD = do_GET

    def _refuse(self) -> None:
        # The request body is not read: close the connection rather than parse it as a request.
        self.close_connection = True
        self._error(405, "the dashboard is read-only: GET only")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests (bad request line, oversized headers) get JSON too, not HTML."""
        self.close_connection = True
        self._error(code, message or self.responses.get(code, ("error",))[0])

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _api(self, path: str, raw_query: str) -> tuple[int, dict]:
        now = api.now()
        status = self._monitor_status()
        if path == "/api/health":
            parse_query(raw_query, ())
            return 200, {"ok": True, "time": now, "monitor": status}
        match = _DEVICE_PATH.match(path)
        routes = {"/api/fleet": (), "/api/drift": ("device", "feature", "hours"),
                  "/api/distribution": ("device", "feature", "bundle", "hours"),
                  "/api/alerts": ("hours",)}
        if match is None and path not in routes:
            raise ApiError(404, f"no such API endpoint: {path[:100]}")
        query = parse_query(raw_query, ("hours",) if match else routes[path])
        device_id = None
        if match:
            try:
                device_id = check_device(unquote(match.group(1), errors="strict"))
            except UnicodeDecodeError:
                raise ApiError(400, "device id is not valid UTF-8") from None
        store = self.open_store(self.store_url)
        try:
            if match:
                return 200, api.device(store, device_id, now, self.stale_after, query.hours)
            if path == "/api/fleet":
                return 200, api.fleet(store, now, self.stale_after, status)
            if path == "/api/drift":
                require(query, "device", "feature")
                return 200, api.drift(store, query.device, query.feature, now, query.hours)
            if path == "/api/distribution":
                require(query, "device", "feature")
                return 200, api.distribution(store, query.device, query.feature, query.bundle, now, query.hours)
            return 200, api.alerts(store, now, query.hours)
        finally:
            store.close()

    def _monitor_status(self) -> dict | None:
        if self.mqtt_status is None:
            return None
        try:
            return self.mqtt_status()
        except Exception:  # noqa: BLE001 - the page still works without the monitor's status
            log.exception("mqtt_status callback failed")
            return {"error": "status unavailable"}


class DashboardServer:
    """A running dashboard. ``url`` is where it answers; ``stop()`` shuts it down."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread):
        self._httpd = httpd
        self._thread = thread
        host, port = httpd.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}/"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def start_dashboard(store_url: str, host: str = "127.0.0.1", port: int = 8765, *,
                    mqtt_status: Callable[[], dict] | None = None,
                    stale_after: float = DEFAULT_STALE_AFTER) -> DashboardServer:
    """Serve the dashboard for the store at ``store_url`` in daemon threads; port 0 picks a free one.

    ``mqtt_status`` (optional) returns the monitor's broker connection state, shown in the page.
    A device whose retained status is online but that sent nothing for ``stale_after`` seconds is
    shown as stale.
    """
    from edgeops.fleet.store import open_store

    host = host.strip("[]")  # "[::1]" as written in URLs
    # Open once now, so a bad URL or an unreachable database fails here with its own hint,
    # not later as a 500 in the browser.
    open_store(store_url).close()
    handler = type("DashboardHandler", (_Handler,), {
        "store_url": store_url, "static": _load_static(), "mqtt_status": staticmethod(mqtt_status)
        if mqtt_status else None, "stale_after": float(stale_after), "open_store": staticmethod(open_store),
        "loopback_only": _is_loopback(host),
    })
    server_class = _Server6 if ":" in host else _Server
    try:
        httpd = server_class((host, port), handler)
    except OSError as exc:
        raise UsageError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}",
                         "choose another --http HOST:PORT (port 0 picks a free port)") from None
    thread = threading.Thread(target=httpd.serve_forever, name="edgeops-dashboard", daemon=True)
    thread.start()
    return DashboardServer(httpd, thread)
