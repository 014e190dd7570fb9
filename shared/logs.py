"""Logging setup shared by the services: JSON lines for machines, one text line for people.

``WOOSYNC_LOG_FORMAT`` picks the format: ``json`` (python-json-logger: one object per line with
``timestamp``, ``level``, ``service``, ``logger``, ``message``, and ``job_id``, ``org_id``,
``message_id`` when the work is about one), ``text`` (the service name first, the ids at the
end), or ``auto`` (the default): text when stderr is a terminal, JSON otherwise.

The ids come from :func:`log_context`, a context variable, so every line logged while a message
or a job is handled carries them without being passed down: the consumer edge
(``shared.consuming``) binds the message id and the message's job and org, the api's actions
bind the org and job they act on, the tracker its per-job work. Tasks started inside the block
inherit the ids (asyncio copies the context), nothing else is shared.

Redaction. httpx logs every request URL at INFO, and with query-string auth that URL holds the
consumer secret, so its loggers are held at WARNING; then both formatters pass their whole output
through :func:`redact` (the message, every extra field and the formatted traceback, where an
exception's text may repeat a secret), and a filter masks the message itself for any other
handler that sees the record afterwards (pytest's capture).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

LogFormat = Literal["auto", "json", "text"]

_SECRET_PATTERNS = (
    re.compile(r"(consumer_secret=)[^&\s\"']+"),
    re.compile(r"(oauth_signature=)[^&\s\"']+"),
    re.compile(r"\b(cs_)[0-9a-fA-F]{8,}"),
    re.compile(r"([?&]token=)[^&\s\"']+"),  # signed progress tokens in access logs
    re.compile(r"(/woocommerce/webhooks/)[A-Za-z0-9_%-]+"),  # webhook URL tokens
    re.compile(r"\b(wsk_)[A-Za-z0-9_-]{8,}"),  # API keys (shared.crypto.API_KEY_PREFIX)
    re.compile(r"(\bBearer\s+)[^\s\"',]+", re.IGNORECASE),
)

# What a line of work may be about; bound by log_context, written by both formats in this order.
CONTEXT_FIELDS = ("job_id", "org_id", "message_id")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_context: ContextVar[Mapping[str, str]] = ContextVar("woosync_log_context", default=_EMPTY)


def redact(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


@contextmanager
def log_context(**ids: object) -> Iterator[None]:
    """Every record logged inside the block (and in tasks started there) carries ``ids``, on top
    of those already bound; a ``None`` value leaves that id as it was."""
    added = {name: str(value) for name, value in ids.items() if value is not None}
    token = _context.set(MappingProxyType({**_context.get(), **added}))
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> Mapping[str, str]:
    """The ids bound here (read-only)."""
    return _context.get()


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class ContextFilter(logging.Filter):
    """Puts the service name and the bound ids on each record (an explicit ``extra`` wins)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class TextFormatter(logging.Formatter):
    """``time service LEVEL logger: message [job_id=… org_id=… message_id=…]``, redacted."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = " ".join(
            f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if hasattr(record, name)
        )
        if ids:  # after the message, before a traceback's first line
            head, newline, rest = text.partition("\n")
            text = f"{head} [{ids}]{newline}{rest}"
        return redact(text)


class JsonFormatter(_JsonFormatter):
    """One JSON object per record; every string in it (traceback included) redacted."""

    def __init__(self) -> None:
        super().__init__(
            ["levelname", "service", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp=True,
            # uvicorn's duplicate of the message with terminal colours
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {key: _redacted(value) for key, value in log_data.items()}


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    if isinstance(value, datetime):
        return value.isoformat()  # the timestamp: 2026-12-03T11:29:50.036944+00:00
    return redact(str(value))  # a UUID, a datetime, an exception: as the line would print it


def resolve_format(wanted: LogFormat, stream: TextIO) -> Literal["json", "text"]:
    """``auto`` is text on a terminal, JSON otherwise (a file, a pipe, a container's log)."""
    if wanted != "auto":
        return wanted
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def make_handler(
    service: str, log_format: LogFormat = "auto", stream: TextIO | None = None
) -> logging.Handler:
    """The one handler of a service process: its format, the ids and the redaction."""
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    if resolve_format(log_format, stream) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(service))
    handler.addFilter(RedactingFilter())
    handler.addFilter(ContextFilter(service))
    return handler


def configure(service: str, level: str = "INFO", log_format: LogFormat = "auto") -> logging.Logger:
    root = logging.getLogger()
    root.handlers[:] = [make_handler(service, log_format)]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(f"woosync.{service}")
