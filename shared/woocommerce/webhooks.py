"""WooCommerce webhook deliveries: their signature, and the secrets and URL tokens woosync makes.

``X-WC-Webhook-Signature`` is the base64 of the HMAC-SHA256 of the raw request body, keyed by
the webhook's secret (WooCommerce ``WC_Webhook::generate_signature``). It is checked over the
bytes as received (never a re-encoded JSON) with :func:`hmac.compare_digest`, so the time taken
does not tell how much of a forged signature was right.

A delivery's URL ends in a random token (256 bits) that names one webhook; only its SHA-256 is
stored, as for API keys. The secret is letters and digits only: WooCommerce's admin form
sanitises secrets and HTML-entity-decodes the key, which would change other characters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
from typing import Final

TOPICS: Final = ("customer.created", "customer.updated", "customer.deleted")
SIGNATURE_HEADER: Final = "x-wc-webhook-signature"
SECRET_LENGTH: Final = 48
_SECRET_ALPHABET: Final = string.ascii_letters + string.digits


def sign(secret: str, body: bytes) -> str:
    """The signature WooCommerce sends for ``body``."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def signature_valid(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``secret``, compared in constant
    time; a missing or non-ASCII header is simply wrong."""
    if not header:
        return False
    expected = sign(secret, body).encode("ascii")
    return hmac.compare_digest(expected, header.strip().encode("utf-8", "replace"))


def new_secret() -> str:
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_LENGTH))


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()
