"""JSON-lines logging for operators.

Every line carries ``ts``, ``level``, ``logger``, ``event`` and ``town_id`` (the town is process-wide:
one container serves one town). Secrets never reach a line: keys that name a secret are redacted, and
every value registered with :func:`register_secret` is scrubbed from the serialised line, whatever
field it hides in.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
import traceback
from typing import Any

from gastown.core.secrets import REDACTED, is_secret_key, scrub_value

_state_lock = threading.Lock()
_town_id: str | None = None
_secrets: set[str] = set()


def set_town_id(town_id: str | None) -> None:
    global _town_id
    _town_id = town_id


def get_town_id() -> str | None:
    return _town_id


def register_secret(value: str | None) -> None:
    """Scrub ``value`` from every later log line (tokens, passwords). Short values are ignored."""
    if value and len(value) >= 8:
        with _state_lock:
            _secrets.add(value)


def redact(value: Any, key: str | None = None) -> Any:
    """Return ``value`` with secret-named keys replaced, recursively."""
    if key is not None and is_secret_key(key) and value not in (None, "", False):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def scrub(text: str) -> str:
    with _state_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            "town_id": _town_id,
        }
        fields = getattr(record, "fields", None)
        if fields:
            for k, v in redact(fields).items():
                if k not in line or (k == "town_id" and v is not None):
                    line[k] = v
        if record.exc_info:
            line["error"] = repr(record.exc_info[1])
            line["stack"] = "".join(traceback.format_exception(*record.exc_info))
        return scrub_value(scrub(json.dumps(line, default=str)))


class EventLogger:
    """``log.info("agent.started", agent_id=..)``: an event name plus structured fields."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _emit(self, level: int, event: str, exc_info: Any, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, exc_info=exc_info, extra={"fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, None, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, None, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, None, fields)

    def error(self, event: str, exc_info: Any = None, **fields: Any) -> None:
        self._emit(logging.ERROR, event, exc_info, fields)


def get_logger(name: str) -> EventLogger:
    return EventLogger(name)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (a test's capture, or a replaced stream),
    never to a stream object that may since have been closed."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


_handler: logging.Handler | None = None


def configure(level: str = "INFO", stream: Any = None) -> None:
    """Route the root logger to JSON lines on stderr (idempotent)."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    _handler.setFormatter(JsonFormatter())
    root.addHandler(_handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("boto3").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
