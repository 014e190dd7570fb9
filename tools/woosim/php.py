"""The few PHP and WordPress string functions whose quirks a WooCommerce client can observe.

Query strings are parsed as PHP's ``parse_str`` does (last duplicate wins, ``a[]=`` builds an
array, dots and spaces in names become underscores), because WooCommerce signs, validates and
echoes (in ``Link`` headers) the parsed ``$_GET`` array, not the raw query string.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

PhpValue = str | dict[str, Any]  # A PHP array is an ordered dict with str keys ("0", "1", ...).

_NUMERIC_RE = re.compile(r"^[ \t\n\r\v\f]*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?[ \t\n\r\v\f]*$")
_BRACKETS_RE = re.compile(r"\[([^\]]*)\]")


def rawurlencode(text: str) -> str:
    """RFC 3986: everything but ``A-Za-z0-9-_.~`` percent-encoded (PHP ``rawurlencode``)."""
    return quote(text, safe="~")


def rawurldecode(text: str) -> str:
    return unquote(text)


def urlencode(text: str) -> str:
    """PHP ``urlencode``: spaces as ``+`` and ``~`` encoded too."""
    return quote_plus(text, safe="").replace("~", "%7E")


def urldecode(text: str) -> str:
    return unquote_plus(text)


def parse_str(query: str) -> dict[str, PhpValue]:
    """PHP ``parse_str``: ordered, last duplicate wins in place, bracket names build arrays."""
    result: dict[str, PhpValue] = {}
    for part in query.split("&"):
        if not part:
            continue
        raw_key, _, raw_value = part.partition("=")
        key, value = urldecode(raw_key), urldecode(raw_value)
        _assign(result, key.lstrip(" "), value)
    return result


def _assign(result: dict[str, PhpValue], key: str, value: str) -> None:
    bracket = key.find("[")
    subkeys: list[str] = []
    if bracket > 0:
        rest = key[bracket:]
        position = 0
        while position < len(rest) and rest[position] == "[":
            match = _BRACKETS_RE.match(rest, position)
            if not match:
                break
            subkeys.append(match.group(1))
            position = match.end()
        # An unmatched "[" is turned into "_" like the other odd characters.
        key = key[:bracket] if subkeys else key[:bracket] + "_" + key[bracket + 1 :]
    base = key.replace(".", "_").replace(" ", "_")
    if not base:
        return
    if not subkeys:
        result[base] = value
        return
    container = result.get(base)
    if not isinstance(container, dict):
        container = {}
        result[base] = container
    for depth, subkey in enumerate(subkeys):
        last = depth == len(subkeys) - 1
        if subkey == "":
            numeric = [int(k) for k in container if k.lstrip("-").isdigit()]
            subkey = str(max(numeric) + 1 if numeric else 0)
        if last:
            container[subkey] = value
        else:
            inner = container.get(subkey)
            if not isinstance(inner, dict):
                inner = {}
                container[subkey] = inner
            container = inner


def build_query(data: dict[str, Any], *, prefix_key: str = "") -> str:
    """WordPress ``build_query``: no encoding at all, nested keys as ``k%5Bi%5D``."""
    parts: list[str] = []
    for key, value in data.items():
        name = f"{prefix_key}%5B{key}%5D" if prefix_key else key
        if value is None:
            continue
        if isinstance(value, dict):
            parts.append(build_query(value, prefix_key=name))
        else:
            parts.append(f"{name}={'0' if value is False else value}")
    return "&".join(part for part in parts if part)


def _urlencode_deep(data: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _urlencode_deep(value) if isinstance(value, dict) else urlencode(str(value))
        for key, value in data.items()
    }


def add_query_arg(args: dict[str, Any], url: str) -> str:
    """WordPress ``add_query_arg(array, url)``, including its double-encoding behaviour.

    Existing query values are decoded and re-encoded, new values are inserted raw, and ``=`` is
    dropped after empty values, exactly as WordPress does when it builds pagination links.
    """
    fragment = ""
    if "#" in url:
        url, fragment = url[: url.index("#")], url[url.index("#") :]
    protocol = ""
    for scheme in ("http://", "https://"):
        if url.lower().startswith(scheme):
            protocol, url = url[: len(scheme)], url[len(scheme) :]
    if "?" in url:
        base, query = url.split("?", 1)
        base += "?"
    elif protocol or "=" not in url:
        base, query = url + "?", ""
    else:
        base, query = "", url
    merged = _urlencode_deep(parse_str(query))
    merged.update(args)
    built = build_query(merged).strip("?")
    built = re.sub(r"=(&|$)", r"\1", built)
    out = (protocol + base + built + fragment).rstrip("?")
    return out.replace("?#", "#")


def is_numeric(value: object) -> bool:
    return isinstance(value, str) and bool(_NUMERIC_RE.match(value))


def rest_is_integer(value: object) -> bool:
    """WordPress ``rest_is_integer``: numeric and integral ("10", "1e2", "10.0")."""
    if not is_numeric(value):
        return False
    number = float(str(value))
    return number == round(number)


def absint(value: object) -> int:
    if isinstance(value, str) and is_numeric(value):
        return abs(int(float(value)))
    return 0


def wp_parse_list(value: PhpValue) -> list[Any]:
    if isinstance(value, dict):
        return list(value.values())
    return [part for part in re.split(r"[\s,]+", value) if part]


def wp_parse_id_list(value: PhpValue) -> tuple[int, ...]:
    """Unique absolute integers, first occurrence order."""
    seen: dict[int, None] = {}
    for item in wp_parse_list(value):
        seen.setdefault(absint(item) if isinstance(item, str) else 0, None)
    return tuple(seen)


def esc_attr(text: str) -> str:
    """The HTML escaping WooCommerce applies to ``search`` before it reaches the query."""
    text = re.sub(r"&(?!#?\w+;)", "&amp;", text)
    return text.replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;").replace(
        "'", "&#039;"
    )


def sanitize_text_field(text: str) -> str:
    """Tags and line breaks removed, whitespace runs collapsed, trimmed."""
    text = re.sub(r"<[^>]*>?", "", text)
    text = re.sub(r"%[a-fA-F0-9]{2}", "", text)
    return re.sub(r"[\r\n\t ]+", " ", text).strip()


_EMAIL_LOCAL_RE = re.compile(r"^[a-zA-Z0-9!#$%&'*+/=?^_`{|}~.-]+$")
_EMAIL_LABEL_RE = re.compile(r"^[a-z0-9-]+$", re.IGNORECASE)


def is_email(email: str) -> bool:
    """WordPress ``is_email``: the same step-by-step checks, without its filters."""
    if len(email) < 6 or "@" not in email[1:]:
        return False
    local, domain = email.split("@", 1)
    if not _EMAIL_LOCAL_RE.match(local) or ".." in domain:
        return False
    if domain.strip(" \t\n\r\0\x0B.") != domain:
        return False
    labels = domain.split(".")
    if len(labels) < 2:
        return False
    return all(label.strip(" \t\n\r\0\x0B-") == label and _EMAIL_LABEL_RE.match(label)
               for label in labels)
