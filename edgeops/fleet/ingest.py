"""Parse and validate what agents publish (docs/telemetry.md) before anything is stored.

Everything that arrives over MQTT is untrusted: a broken agent, an old agent, or anyone who can
publish on the broker. ``parse_message`` either returns a ``Message`` whose payload has the
documented shape, or raises ``PayloadError`` with a short, fixed reason (never text taken from
the payload, so that counting by reason cannot be flooded with distinct keys).

A retained *empty* message on a status topic is how an operator forgets a decommissioned device
(telemetry.md): it parses to ``Message(kind="status", payload={})`` and ``Store.record_status``
removes the device from the device list.

The field checks of each kind live in ingest_checks.py.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

from edgeops.fleet import ingest_fast
from edgeops.fleet.ingest_checks import PayloadError, check_heartbeat, check_status, check_window

__all__ = ["MAX_PAYLOAD_BYTES", "Message", "PayloadError", "parse_message", "parse_window_fast"]

MAX_PAYLOAD_BYTES = 1024 * 1024
KINDS_BY_TOPIC = {"telemetry": "window", "heartbeat": "heartbeat", "status": "status"}
DEVICE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # telemetry.md: never a wildcard or "/"


@dataclass(frozen=True)
class Message:
    """One validated message. ``kind``: "window" | "heartbeat" | "status".

    ``text`` is the payload's JSON text as received (already validated); the store keeps it as
    is instead of encoding the dict again. ``None`` for messages built in code.
    """

    kind: str
    device_id: str
    payload: dict
    received: float
    text: str | None = field(default=None, repr=False, compare=False)


def _reject_constant(name: str):
    raise PayloadError("nan")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)

try:  # orjson decodes a window 3-4x faster; JSON decoding is the largest part of ingestion
    from orjson import JSONDecodeError as _FastError
    from orjson import loads as _fast_loads
except ImportError:  # the monitor extra installs it; without it the stdlib decoder does it all
    _fast_loads, _FastError = None, ValueError


def _decode(text: str):
    """Decode with orjson when installed. It is strict (no NaN, no 64-bit overflow, bounded
    nesting); on anything it refuses, the stdlib decoder runs and names the exact reason."""
    if _fast_loads is not None:
        try:
            return _fast_loads(text)
        except _FastError:
            pass
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise PayloadError("too_deep") from None
    except ValueError:  # JSONDecodeError, and int strings over Python's digit limit
        raise PayloadError("json") from None


def parse_message(topic: str, payload: bytes, prefix: str = "edgeops", received: float | None = None) -> Message:
    """Validate one MQTT message; raise PayloadError(reason) if anything is off."""
    if received is None:
        received = time.time()
    device_id, suffix = _parse_topic(topic, prefix)
    kind = KINDS_BY_TOPIC[suffix]
    if payload is None:
        payload = b""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise PayloadError("type")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError("too_large")
    if len(payload) == 0:
        if kind == "status":
            return Message("status", device_id, {}, received, "")
        raise PayloadError("empty")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("utf8") from None
    data = _decode(text)
    if type(data) is not dict:
        raise PayloadError("not_object")
    version = data.get("schema_version")
    if type(version) is not int or version != 1:
        raise PayloadError("schema_version")
    if data.get("kind") != kind:
        raise PayloadError("kind")
    if data.get("device_id") != device_id:
        raise PayloadError("device_id")
    if kind == "window":
        check_window(data)
    elif kind == "heartbeat":
        check_heartbeat(data)
    else:
        check_status(data)
    return Message(kind, device_id, data, float(received), text)


def parse_window_fast(topic: str, payload: bytes, prefix: str = "edgeops"):
    """(device_id, typed window, packed sections, text) of a documented window, else None.

    The fast path (ingest_fast.py): None means "not decided here", never "invalid"; then
    parse_message decides, with its exact reason.
    """
    if not ingest_fast.available() or type(topic) is not str or not topic.endswith("/telemetry"):
        return None
    try:
        device_id, _ = _parse_topic(topic, prefix)
        if len(payload) > MAX_PAYLOAD_BYTES:
            return None
        text = bytes(payload).decode("utf-8")
    except (PayloadError, UnicodeDecodeError, TypeError):
        return None
    result = ingest_fast.decode_window(text)
    if result is None or result[0].device_id != device_id:
        return None
    return device_id, result[0], result[1], text


def _parse_topic(topic, prefix: str) -> tuple[str, str]:
    if isinstance(topic, (bytes, bytearray)):
        try:
            topic = bytes(topic).decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("topic") from None
    if not isinstance(topic, str):
        raise PayloadError("topic")
    head = prefix + "/v1/devices/"
    if not topic.startswith(head):
        raise PayloadError("topic")
    parts = topic[len(head):].split("/")
    if len(parts) != 2 or parts[1] not in KINDS_BY_TOPIC:
        raise PayloadError("topic")
    if not DEVICE_ID.fullmatch(parts[0]):
        raise PayloadError("topic_device_id")
    return parts[0], parts[1]


