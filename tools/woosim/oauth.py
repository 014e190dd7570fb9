"""WooCommerce's one-legged OAuth 1.0a verification, re-implemented from its PHP source.

Written against ``WC_REST_Authentication`` rather than with an OAuth library, so that the
simulator is an independent check of the client's signing: parameters are the PHP-parsed query
string plus any ``Authorization: OAuth`` header parameters, sorted by raw key with ``strcmp``,
each ``key=value`` RFC 3986-encoded, joined with ``%26``; the key is ``consumer_secret + "&"``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable
from typing import Any

from tools.woosim import php
from tools.woosim.php import PhpValue

REQUIRED_PARAMS = (
    "oauth_consumer_key",
    "oauth_timestamp",
    "oauth_nonce",
    "oauth_signature",
    "oauth_signature_method",
)
HASHES: dict[str, Callable[..., Any]] = {"HMAC-SHA1": hashlib.sha1, "HMAC-SHA256": hashlib.sha256}
NONCE_WINDOW_S = 15 * 60

_HEADER_PARAM_RE = re.compile(r'(oauth_[a-z_-]*)=(:?"([^"]*)"|([^,]*))')


def php_empty(value: PhpValue | None) -> bool:
    """PHP ``empty()`` for request values: missing, "" and "0" are empty."""
    if value is None:
        return True
    if isinstance(value, dict):
        return not value
    return value in ("", "0")


def parse_authorization_header(header: str) -> dict[str, str]:
    """``Authorization: OAuth k="v", ...`` -> oauth_* parameters (other keys are ignored)."""
    header = header.strip()
    if not header.startswith("OAuth "):
        return {}
    params: dict[str, str] = {}
    for match in _HEADER_PARAM_RE.finditer(header):
        quoted, bare = match.group(3), match.group(4)
        params[match.group(1)] = php.urldecode(quoted if quoted else (bare or ""))
    return params


def collect_params(
    query: dict[str, PhpValue], authorization: str | None
) -> dict[str, PhpValue]:
    """``array_merge($_GET, header params)``: header values win."""
    params: dict[str, PhpValue] = dict(query)
    if authorization:
        params.update(parse_authorization_header(authorization))
    return params


def missing_params(params: dict[str, PhpValue]) -> list[str] | None:
    """None when no OAuth parameter is present at all (not an OAuth request); else the gaps."""
    missing = [name for name in REQUIRED_PARAMS if php_empty(params.get(name))]
    if len(missing) == len(REQUIRED_PARAMS):
        return None
    return missing


def _normalize(value: PhpValue) -> PhpValue:
    if isinstance(value, dict):
        return {key: _normalize(item) for key, item in value.items()}
    return php.rawurlencode(value)


def _join_with_equals(params: dict[str, PhpValue], prefix: str = "") -> list[str]:
    pairs: list[str] = []
    for key, value in params.items():
        name = f"{prefix}%5B{key}%5D" if prefix else key
        if isinstance(value, dict):
            pairs.extend(_join_with_equals(value, name))
        else:
            pairs.append(php.rawurlencode(f"{name}={value}"))
    return pairs


def signature_base_string(method: str, url: str, params: dict[str, PhpValue]) -> str:
    """``METHOD&rawurlencode(url)&<sorted, encoded params>``; ``oauth_signature`` excluded."""
    ordered = sorted(
        ((key, value) for key, value in params.items() if key != "oauth_signature"),
        key=lambda item: item[0].encode("utf-8"),
    )
    normalized = {php.rawurlencode(key): _normalize(value) for key, value in ordered}
    query = "%26".join(_join_with_equals(normalized))
    return f"{method.upper()}&{php.rawurlencode(url)}&{query}"


def sign(base_string: str, consumer_secret: str, signature_method: str) -> str:
    """base64(HMAC(consumer_secret + "&", base_string)); raises KeyError for other methods."""
    digest = hmac.new(
        (consumer_secret + "&").encode("utf-8"),
        base_string.encode("utf-8"),
        HASHES[signature_method],
    ).digest()
    return base64.b64encode(digest).decode("ascii")


def provided_signature(params: dict[str, PhpValue]) -> str:
    """The client's signature as WooCommerce reads it: spaces back to "+", then decoded."""
    value = params.get("oauth_signature")
    return php.rawurldecode(value.replace(" ", "+")) if isinstance(value, str) else ""


def signature_matches(
    method: str, url: str, params: dict[str, PhpValue], consumer_secret: str
) -> bool:
    expected = sign(
        signature_base_string(method, url, params),
        consumer_secret,
        str(params["oauth_signature_method"]),
    )
    return hmac.compare_digest(expected, provided_signature(params))
