"""Store secrets at rest and signed progress tokens, both keyed from ``WOOSYNC_SECRET_KEY``.

Separate keys are derived with HKDF for each purpose, so a leaked token key says nothing about
the encryption key. Fernet (AES-CBC + HMAC) is the authenticated cipher; itsdangerous signs the
short-lived tokens that let a browser's EventSource follow one job.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from uuid import UUID

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

API_KEY_PREFIX = "wsk_"


def _derive(secret_key: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"woosync", info=purpose).derive(
        secret_key.encode()
    )


class SecretBox:
    """Encrypts consumer secrets for the ``woo_connections`` table."""

    def __init__(self, secret_key: str) -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(secret_key, b"store-secrets")))

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken as exc:
            raise ValueError("stored secret cannot be decrypted with this secret key") from exc


class ProgressTokens:
    """Signed, expiring tokens bound to one job and one org (for ``?token=`` on the SSE URL)."""

    def __init__(self, secret_key: str, ttl_s: int) -> None:
        self._serializer = URLSafeTimedSerializer(
            _derive(secret_key, b"progress-tokens"), salt="progress"
        )
        self._ttl_s = ttl_s

    def issue(self, job_id: UUID, org_id: UUID) -> str:
        return self._serializer.dumps({"j": str(job_id), "o": str(org_id)})

    def verify(self, token: str, job_id: UUID) -> UUID | None:
        """The token's org when it is valid for this job, else None."""
        try:
            data: Any = self._serializer.loads(token, max_age=self._ttl_s)
        except (SignatureExpired, BadSignature):
            return None
        if not isinstance(data, dict) or data.get("j") != str(job_id):
            return None
        try:
            return UUID(data["o"])
        except (KeyError, ValueError, TypeError):
            return None


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> bytes:
    # Keys carry 256 random bits, so a plain SHA-256 is enough; no slow KDF needed.
    return hashlib.sha256(key.encode()).digest()
