"""Blocking JSON GET for tests that drive a server process from synchronous code."""
from __future__ import annotations

import json
import urllib.error
import urllib.request


def get_json(url: str, token: str | None = None, timeout: float = 2.0) -> tuple[int, dict]:
    """``(status, body)``; an HTTP error status is an answer here, not an exception."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
