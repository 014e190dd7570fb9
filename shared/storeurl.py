"""One spelling per store URL, and the identity of a store connection.

A connection is the org's link to one store, whatever key or auth mode reaches it. So every
place that stores or looks up a connection uses :func:`normalize_store_url`, and the database
keys connections by :func:`store_identity` of that (migration 0009 computes the same in SQL, as
the generated column ``woo_connections.store_identity``).

Normalized: scheme and host lower-cased, a non-ASCII host in its IDNA (``xn--``) form, the
default port (80 for http, 443 for https) dropped, trailing slashes of the path removed. The rest
of the path is kept as it is (WordPress may live under a sub-path, and paths are case-sensitive).
A URL with a user name or password (credentials belong in ``consumer_key``/``consumer_secret``),
a query or a fragment (the client appends its own path and query) is refused.

http and https of one host, port and path are the same store: its customers are the same people,
and a shop that moves to TLS (or back) must not get a second copy of them. The connection keeps
the scheme of the last start whose credentials the store accepted; the api records a change of
scheme as activity (a move to http as a warning). Over http only OAuth 1.0a is accepted, which
never sends the secret, so such a move exposes no credential.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

import idna

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}


def _ascii_host(host: str) -> str:
    """The host as it goes on the wire: lower-case, and each label that is not ASCII in its
    IDNA form (label by label, as migration 0009 does in SQL; an ASCII label is left alone, so
    names that IDNA 2008 refuses but DNS serves, such as ``my_shop``, keep working)."""
    labels = []
    for label in host.split("."):
        if label.isascii():
            labels.append(label.lower())
            continue
        try:
            labels.append(idna.encode(label, uts46=True).decode("ascii"))
        except (idna.IDNAError, UnicodeError):
            raise ValueError("has a host name that is not a valid internationalized name") from None
    return ".".join(labels)


def normalize_store_url(value: str) -> str:
    """``scheme://host[:port][/path]`` in the one spelling described above; ValueError saying
    what is wrong otherwise."""
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(f"must be at most {MAX_URL_LENGTH} characters")
    if value != value.strip() or any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise ValueError("must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError("has an invalid port or host") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError("must be an http or https URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("must not contain a user name or password")
    if "?" in value or "#" in value:
        raise ValueError("must not contain a query or fragment")
    host = parts.hostname
    if not host:
        raise ValueError("must name a host")
    if ":" in host:  # an IPv6 literal, in its shortest form where it parses
        try:
            host = ipaddress.IPv6Address(host).compressed
        except ValueError:
            host = host.lower()
        netloc = f"[{host}]"
    else:
        netloc = _ascii_host(host)
    if port is not None and port != DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))


def store_identity(normalized_url: str) -> str:
    """What makes two normalized URLs the same store: everything but the scheme."""
    return normalized_url.split("://", 1)[1]
