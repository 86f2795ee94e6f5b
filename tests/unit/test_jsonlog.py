"""Operator log lines: JSON, town id on every line, secrets redacted by key and scrubbed by value."""
from __future__ import annotations

import io
import json

import pytest

from gastown.core import jsonlog


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    jsonlog.configure()
    jsonlog.set_town_id(None)


def _capture():
    buf = io.StringIO()
    jsonlog.configure(stream=buf)
    return buf


def test_town_id_on_every_line_and_per_call_override():
    buf = _capture()
    jsonlog.set_town_id("town-a")
    log = jsonlog.get_logger("t")
    log.info("one")
    log.info("two", town_id="town-b")
    jsonlog.set_town_id(None)
    lines = [json.loads(l) for l in buf.getvalue().splitlines()]
    assert [l["town_id"] for l in lines] == ["town-a", "town-b"]
    assert lines[0]["event"] == "one" and lines[0]["level"] == "info"


def test_secret_keys_redacted_and_registered_values_scrubbed():
    buf = _capture()
    jsonlog.register_secret("super-secret-value-123")
    log = jsonlog.get_logger("t")
    log.info("x", container_token="abc", nested={"password": "p", "ok": 1}, note="has super-secret-value-123 inside")
    line = json.loads(buf.getvalue())
    assert line["container_token"] == "[redacted]" and line["nested"] == {"password": "[redacted]", "ok": 1}
    assert "super-secret-value-123" not in buf.getvalue()


def test_exception_logged_with_stack():
    buf = _capture()
    try:
        raise ValueError("boom")
    except ValueError:
        jsonlog.get_logger("t").error("failed", exc_info=True)
    line = json.loads(buf.getvalue())
    assert "ValueError" in line["stack"] and line["error"] == "ValueError('boom')"
