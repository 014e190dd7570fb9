"""API keys and ``WC_REST_Authentication``'s decision, step by step as in WooCommerce.

Over HTTPS (``is_ssl()``): query-string ``consumer_key``/``consumer_secret`` first, else HTTP
Basic. An unknown key is *not* an error (the request continues unauthenticated and fails the
permission check later); a wrong secret is. Then, and always over plain HTTP, one-legged OAuth
1.0a from the query string or an ``Authorization: OAuth`` header.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from tools.woosim import oauth
from tools.woosim.php import PhpValue
from tools.woosim.wp import WPError

AUTH_ERROR = "woocommerce_rest_authentication_error"
ADMIN_CAPS = frozenset({"list_users", "manage_woocommerce", "edit_users", "create_customers"})
REVOKE_MODES = ("secret", "deleted", "no_read", "no_caps")


def default_credentials(seed: int) -> tuple[str, str]:
    """A deterministic ``ck_``/``cs_`` pair (40 hex digits each) for a seed."""
    key = hashlib.sha256(f"woosim consumer key {seed}".encode()).hexdigest()[:40]
    secret = hashlib.sha256(f"woosim consumer secret {seed}".encode()).hexdigest()[:40]
    return f"ck_{key}", f"cs_{secret}"


@dataclass(frozen=True)
class ApiKey:
    """A row of ``woocommerce_api_keys`` joined with its WordPress user's capabilities."""

    consumer_key: str
    consumer_secret: str
    permissions: str = "read_write"  # read | write | read_write
    capabilities: frozenset[str] = ADMIN_CAPS


@dataclass
class KeyRing:
    """The store's API key (revocable), keys added later (a shop owner rotating its key creates
    a second one, then deletes the first), and the used nonces."""

    consumer_key: str
    consumer_secret: str
    clock: Callable[[], float] = time.time
    revoked: str | None = None  # One of REVOKE_MODES while revoked.
    _nonces: dict[int, str] = field(default_factory=dict)
    added: dict[str, str] = field(default_factory=dict)  # consumer key -> secret

    def add(self, consumer_key: str | None = None, consumer_secret: str | None = None) -> ApiKey:
        """Another working key (random unless given); the existing keys keep working."""
        consumer_key = consumer_key or f"ck_{secrets.token_hex(20)}"
        consumer_secret = consumer_secret or f"cs_{secrets.token_hex(20)}"
        if consumer_key == self.consumer_key or consumer_key in self.added:
            raise ValueError("a key with this consumer_key exists already")
        self.added[consumer_key] = consumer_secret
        return ApiKey(consumer_key, consumer_secret)

    def remove(self, consumer_key: str) -> None:
        """Deletes a key: it is unknown from now on (the store's first key as ``deleted``)."""
        if consumer_key in self.added:
            del self.added[consumer_key]
        elif consumer_key == self.consumer_key:
            self.revoked = "deleted"
        else:
            raise ValueError("no such key")

    def revoke(self, mode: str = "secret") -> None:
        """``secret``: the secret was regenerated (401 "Consumer secret is invalid.");
        ``deleted``: the key is gone (unauthenticated: 401 cannot_view / "Consumer key is
        invalid."); ``no_read``: a write-only key (401); ``no_caps``: the key's user lost
        ``list_users`` (403)."""
        if mode not in REVOKE_MODES:
            raise ValueError(f"mode must be one of {', '.join(REVOKE_MODES)}")
        self.revoked = mode

    def restore(self) -> None:
        self.revoked = None

    def lookup(self, consumer_key: str) -> ApiKey | None:
        for added_key, added_secret in self.added.items():
            if hmac.compare_digest(consumer_key.encode(), added_key.encode()):
                return ApiKey(added_key, added_secret)
        if not hmac.compare_digest(consumer_key.encode(), self.consumer_key.encode()):
            return None
        key = ApiKey(self.consumer_key, self.consumer_secret)
        if self.revoked == "deleted":
            return None
        if self.revoked == "secret":
            rotated = hashlib.sha256(f"rotated {self.consumer_secret}".encode()).hexdigest()
            return replace(key, consumer_secret=f"cs_{rotated[:40]}")
        if self.revoked == "no_read":
            return replace(key, permissions="write")
        if self.revoked == "no_caps":
            return replace(key, capabilities=frozenset())
        return key

    def use_nonce(self, timestamp: str, nonce: str) -> WPError | None:
        """The timestamp window and nonce replay check, including WooCommerce's quirk of
        remembering one nonce per timestamp (``$used_nonces[$timestamp] = $nonce``)."""
        now = self.clock()
        try:
            stamp = int(float(timestamp))
        except ValueError:
            return WPError(AUTH_ERROR, "Invalid timestamp.", 401)
        if stamp < now - oauth.NONCE_WINDOW_S or stamp > now + oauth.NONCE_WINDOW_S:
            return WPError(AUTH_ERROR, "Invalid timestamp.", 401)
        if nonce in self._nonces.values():
            return WPError(AUTH_ERROR, "Invalid nonce - nonce has already been used.", 401)
        self._nonces[stamp] = nonce
        for used in [t for t in self._nonces if t < now - oauth.NONCE_WINDOW_S]:
            del self._nonces[used]
        return None


@dataclass(frozen=True)
class AuthRequest:
    """What the authenticator reads from a request."""

    method: str
    url: str  # scheme://host[:port]/path, as WordPress rebuilds it for the signature
    query: dict[str, PhpValue]
    authorization: str | None
    is_ssl: bool


@dataclass(frozen=True)
class AuthResult:
    key: ApiKey | None
    error: WPError | None
    method: str  # basic | query | oauth1 | none


def _basic_credentials(authorization: str | None) -> tuple[str, str]:
    """PHP_AUTH_USER / PHP_AUTH_PW: set only for a well-formed ``Basic`` header."""
    if not authorization or authorization[:6].lower() != "basic ":
        return "", ""
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else ("", "")


def authenticate(keys: KeyRing, request: AuthRequest) -> AuthResult:
    error: WPError | None = None
    method = "none"
    if request.is_ssl:
        consumer_key = consumer_secret = ""
        query_key, query_secret = request.query.get("consumer_key"), request.query.get(
            "consumer_secret"
        )
        if (
            isinstance(query_key, str)
            and isinstance(query_secret, str)
            and not oauth.php_empty(query_key)
            and not oauth.php_empty(query_secret)
        ):
            consumer_key, consumer_secret, method = query_key, query_secret, "query"
        if not consumer_key:
            user, password = _basic_credentials(request.authorization)
            if user and password:
                consumer_key, consumer_secret, method = user, password, "basic"
        if consumer_key and consumer_secret:
            key = keys.lookup(consumer_key)
            if key is not None:
                if hmac.compare_digest(key.consumer_secret.encode(), consumer_secret.encode()):
                    return AuthResult(key, None, method)
                error = WPError(AUTH_ERROR, "Consumer secret is invalid.", 401)

    params = oauth.collect_params(request.query, request.authorization)
    missing = oauth.missing_params(params)
    if missing is None:
        return AuthResult(None, error, method)
    method = "oauth1"
    if missing:
        noun = "parameter" if len(missing) == 1 else "parameters"
        message = f"Missing OAuth {noun} {', '.join(missing)}"
        return AuthResult(
            None, WPError("woocommerce_rest_authentication_missing_parameter", message, 401), method
        )
    key = keys.lookup(str(params["oauth_consumer_key"]))
    if key is None:
        return AuthResult(None, WPError(AUTH_ERROR, "Consumer key is invalid.", 401), method)
    if params["oauth_signature_method"] not in oauth.HASHES:
        message = "Invalid signature - signature method is invalid."
        return AuthResult(None, WPError(AUTH_ERROR, message, 401), method)
    if not oauth.signature_matches(request.method, request.url, params, key.consumer_secret):
        message = "Invalid signature - provided signature does not match."
        return AuthResult(None, WPError(AUTH_ERROR, message, 401), method)
    replay = keys.use_nonce(str(params["oauth_timestamp"]), str(params["oauth_nonce"]))
    if replay is not None:
        return AuthResult(None, replay, method)
    return AuthResult(key, None, method)


def check_key_scope(key: ApiKey, http_method: str) -> WPError | None:
    """``rest_pre_dispatch``: the key's read/write permission against the HTTP method."""
    method = http_method.upper()
    if method in ("GET", "HEAD") and key.permissions not in ("read", "read_write"):
        message = "The API key provided does not have read permissions."
        return WPError(AUTH_ERROR, message, 401)
    if method in ("POST", "PUT", "PATCH", "DELETE") and key.permissions not in (
        "write",
        "read_write",
    ):
        message = "The API key provided does not have write permissions."
        return WPError(AUTH_ERROR, message, 401)
    return None
