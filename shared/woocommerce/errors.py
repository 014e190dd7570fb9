"""Errors the store client raises, each with a ``message`` that is safe to show a user.

A message names the HTTP method, the URL *path* and what went wrong. It never holds the URL's
query string (with query auth that holds the secret), the secret, or an httpx exception's text
(which embeds the full URL). Text that came from the store is passed in already sanitised.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every store failure; ``str(err) == err.message``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class StoreAuthError(StoreError):
    """401/403: the store refused the key. Never retried, because repeating cannot help."""

    def __init__(
        self, *, method: str, path: str, status: int, code: str | None, store_message: str | None
    ) -> None:
        self.status = status
        self.code = code
        self.store_message = store_message
        detail = _detail(code, store_message)
        super().__init__(f"store refused the credentials: HTTP {status}{detail} ({method} {path})")


class StoreBadResponse(StoreError):
    """A final answer that is not usable: 400/404/other 4xx, a redirect, missing totals."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        store_message: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.store_message = store_message
        super().__init__(message)

    @classmethod
    def for_status(
        cls, *, method: str, path: str, status: int, code: str | None, store_message: str | None
    ) -> StoreBadResponse:
        detail = _detail(code, store_message)
        return cls(
            f"store answered HTTP {status}{detail} ({method} {path})",
            status=status,
            code=code,
            store_message=store_message,
        )


class StoreUnavailable(StoreError):
    """Transient failures (429, 5xx, timeouts, cut or garbled bodies) outlasted the retry policy."""

    def __init__(
        self,
        *,
        method: str,
        path: str,
        attempts: int,
        elapsed_s: float,
        last_kind: str,
        last_status: int | None,
    ) -> None:
        self.attempts = attempts
        self.elapsed_s = elapsed_s
        self.last_kind = last_kind
        self.last_status = last_status
        plural = "attempt" if attempts == 1 else "attempts"
        super().__init__(
            f"store unavailable: {method} {path} failed after {attempts} {plural} "
            f"in {elapsed_s:.1f}s (last: {last_kind})"
        )


class StoreTLSError(StoreError):
    """The store's TLS certificate did not verify. Never retried: it will not fix itself."""

    def __init__(self, *, method: str, path: str, host: str) -> None:
        self.host = host
        super().__init__(
            f"the TLS certificate of {host} could not be verified ({method} {path}); "
            "check the store URL or the CA bundle"
        )


def _detail(code: str | None, store_message: str | None) -> str:
    parts = [part for part in (code, store_message) if part]
    return (" " + ": ".join(parts)) if parts else ""
