"""The dashboard API's query strings, validated: anything unexpected is a 400, never a guess."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

DEVICE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")   # telemetry.md; fullmatch (a "$" would take "id\n")
BUNDLE_ID = re.compile(r"[0-9a-f]{64}")
MAX_QUERY_CHARS = 2048
MAX_FEATURE_CHARS = 200
MAX_HOURS = 24.0 * 90            # the longest history a page may ask for
DEFAULT_HOURS = 24.0


class ApiError(Exception):
    """A request the API refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Query:
    """A validated query string: each known parameter at most once."""

    device: str | None = None
    feature: str | None = None
    bundle: str | None = None
    hours: float = DEFAULT_HOURS


def parse_query(raw: str, allowed: tuple[str, ...]) -> Query:
    """Parse and validate a query string; anything unexpected is a 400, never a guess."""
    if len(raw) > MAX_QUERY_CHARS:
        raise ApiError(400, "query string too long")
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=bool(raw),
                          encoding="utf-8", errors="strict", max_num_fields=len(allowed) + 1)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed query string: {exc.__class__.__name__}") from None
    seen: dict[str, str] = {}
    for key, value in pairs:
        if key not in allowed:
            raise ApiError(400, f"unknown parameter {key[:40]!r}; allowed: {', '.join(allowed) or 'none'}")
        if key in seen:
            raise ApiError(400, f"parameter {key!r} given twice")
        seen[key] = value
    out = {}
    if "device" in seen:
        out["device"] = check_device(seen["device"])
    if "feature" in seen:
        out["feature"] = check_feature(seen["feature"])
    if "bundle" in seen:
        if not BUNDLE_ID.fullmatch(seen["bundle"]):
            raise ApiError(400, "bundle must be 64 lowercase hex characters (a bundle id)")
        out["bundle"] = seen["bundle"]
    if "hours" in seen:
        out["hours"] = check_hours(seen["hours"])
    return Query(**out)


def check_device(value: str) -> str:
    if not DEVICE_ID.fullmatch(value):
        raise ApiError(400, "device must be 1-64 characters from A-Z a-z 0-9 . _ -")
    return value


def check_feature(value: str) -> str:
    if not value or len(value) > MAX_FEATURE_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ApiError(400, f"feature must be 1-{MAX_FEATURE_CHARS} printable characters")
    return value


def check_hours(value: str) -> float:
    try:
        hours = float(value)
    except ValueError:
        raise ApiError(400, "hours must be a number") from None
    if not math.isfinite(hours) or hours <= 0 or hours > MAX_HOURS:
        raise ApiError(400, f"hours must be in (0, {MAX_HOURS:g}]")
    return hours


def require(query: Query, *names: str) -> None:
    for name in names:
        if getattr(query, name) is None:
            raise ApiError(400, f"missing parameter {name!r}")
