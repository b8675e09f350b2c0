"""The platform's HTTP API, as the client modules use it (standard library only; cooperative under gevent)."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from typing import Any

from toolclash.targets import NotApplied


def base_url() -> str:
    url = os.environ.get("PLATFORM_URL", "").rstrip("/")
    if not url:
        raise RuntimeError("PLATFORM_URL is not set; export it (e.g. http://127.0.0.1:8000)")
    return url


def request(method: str, path: str, body: Any = None, *, key: str = "", timeout: float = 5.0) -> tuple[int, Any]:
    """``(status, JSON answer)``. A refused connection is :class:`NotApplied`; a timeout or a connection lost
    after sending is left to propagate: the call is then in doubt."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Idempotency-Key"] = key
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base_url() + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError | socket.gaierror):
            raise NotApplied("connection-refused") from None
        raise
    return status, json.loads(raw) if raw else None


def check() -> None:
    try:
        request("GET", "/health", timeout=5)
    except (NotApplied, OSError) as exc:
        raise RuntimeError(f"the platform at {base_url()} does not answer ({exc}); start it or fix PLATFORM_URL") \
            from None
