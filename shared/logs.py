"""Logging setup shared by the services: one line per record, the service name first.

httpx logs every request URL at INFO, and with query-string auth that URL holds the consumer
secret, so its loggers are held at WARNING, and a filter masks anything that looks like a
WooCommerce secret in any record that gets through.
"""

from __future__ import annotations

import logging
import re
import sys

_SECRET_PATTERNS = (
    re.compile(r"(consumer_secret=)[^&\s\"']+"),
    re.compile(r"(oauth_signature=)[^&\s\"']+"),
    re.compile(r"\b(cs_)[0-9a-fA-F]{8,}"),
    re.compile(r"([?&]token=)[^&\s\"']+"),  # signed progress tokens in access logs
)


def redact(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure(service: str, level: str = "INFO") -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(f"woosync.{service}")
