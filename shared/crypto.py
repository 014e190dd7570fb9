"""Store secrets at rest and signed progress tokens, both keyed from ``WOOSYNC_SECRET_KEY``.

Separate keys are derived with HKDF for each purpose, so a leaked token key says nothing about
the encryption key. Fernet (AES-128-CBC + HMAC-SHA256) is the authenticated cipher; itsdangerous
signs the short-lived tokens that let a browser's EventSource follow one job.

Rotation: the current key encrypts and signs; the keys in ``WOOSYNC_SECRET_KEY_PREVIOUS`` only
decrypt and verify, so a new key can be rolled out before ``woosync secrets rotate`` re-encrypts
the stored secrets, and progress tokens issued just before the switch keep working.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

if TYPE_CHECKING:
    from shared.settings import Settings

API_KEY_PREFIX = "wsk_"


def _derive(secret_key: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"woosync", info=purpose).derive(
        secret_key.encode()
    )


def _fernet(secret_key: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(_derive(secret_key, b"store-secrets")))


def _keys(settings: Settings) -> tuple[str, list[str]]:
    return (
        settings.secret_key.get_secret_value(),
        [key.get_secret_value() for key in settings.secret_key_previous],
    )


class UndecryptableSecret(ValueError):
    """No configured key decrypts a stored secret (a lost key, or a tampered row)."""

    def __init__(self) -> None:
        super().__init__(
            "stored secret cannot be decrypted with WOOSYNC_SECRET_KEY "
            "or any of WOOSYNC_SECRET_KEY_PREVIOUS; start a sync with the store's credentials "
            "again to store them anew"
        )


class SecretBox:
    """Encrypts consumer secrets for the ``woo_connections`` table.

    ``previous`` keys (newest first) are tried after the current one when decrypting; they never
    encrypt. The error for a secret no key opens says nothing about the secret or the keys.
    """

    def __init__(self, secret_key: str, previous: Sequence[str] = ()) -> None:
        self._current = _fernet(secret_key)
        self._any = MultiFernet([self._current, *(_fernet(key) for key in previous)])

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        current, previous = _keys(settings)
        return cls(current, previous)

    def encrypt(self, plaintext: str) -> bytes:
        return self._current.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._any.decrypt(bytes(token)).decode()
        except InvalidToken:
            raise UndecryptableSecret() from None

    def is_current(self, token: bytes) -> bool:
        """True when the current key alone decrypts ``token`` (rotation has nothing to do)."""
        try:
            self._current.decrypt(bytes(token))
        except InvalidToken:
            return False
        return True

    def rotate(self, token: bytes) -> bytes:
        """``token`` re-encrypted under the current key, whichever configured key made it."""
        try:
            return self._any.rotate(bytes(token))
        except InvalidToken:
            raise UndecryptableSecret() from None


class ProgressTokens:
    """Signed, expiring tokens bound to one job and one org (for ``?token=`` on the SSE URL).

    The current key signs; ``previous`` keys (newest first) still verify, so rotating the key
    does not cut off a browser that is following a job.
    """

    def __init__(self, secret_key: str, ttl_s: int, previous: Sequence[str] = ()) -> None:
        # itsdangerous signs with the last key of the list and verifies with any of them.
        oldest_first = (*reversed(previous), secret_key)
        self._serializer = URLSafeTimedSerializer(
            [_derive(key, b"progress-tokens") for key in oldest_first],
            salt="progress",
            signer_kwargs={"digest_method": hashlib.sha256},  # HMAC-SHA256, not the SHA-1 default
        )
        self._ttl_s = ttl_s

    @classmethod
    def from_settings(cls, settings: Settings) -> ProgressTokens:
        current, previous = _keys(settings)
        return cls(current, settings.progress_token_ttl_s, previous)

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


SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)


def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802 and 7677).

    ``woosync migrate`` sends this instead of the password in ``ALTER ROLE … PASSWORD``, so the
    password itself never reaches the server, its statement log or its statistics. ASCII only:
    PostgreSQL would first normalise other text (SASLprep), which this does not reproduce.
    """
    if not password.isascii():
        raise ValueError("the database password must be ASCII")
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
