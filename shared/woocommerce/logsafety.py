"""Keeping query-string secrets out of the HTTP libraries' own log records.

WooCommerce echoes every query parameter, ``consumer_secret`` included, into the ``Link`` header
of a list response, and httpcore logs response headers at DEBUG. The services hold these loggers
at WARNING (``shared.logs.configure``), but the client must not depend on how its host set up
logging, so a query-auth client also puts the redacting filter on each of these loggers. Logger
filters do not apply to records of child loggers, hence every name is listed.
"""

from __future__ import annotations

import logging

from shared.logs import RedactingFilter

HTTP_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


def guard_http_loggers() -> None:
    """Redact secrets in httpx/httpcore records; idempotent, so every client may call it."""
    for name in HTTP_LOGGERS:
        http_logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in http_logger.filters):
            http_logger.addFilter(RedactingFilter())
