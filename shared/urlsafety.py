"""Store URLs that cannot point the api or the fetcher at internal services (SSRF).

A caller chooses the store URL, and both the api (checking the store) and the fetcher (crawling
it) then send requests there from inside the deployment. So a URL is accepted only if it is
http(s), carries no credentials, and every address its host resolves to is public: not private,
loopback, link-local, reserved, multicast or unspecified, also when an IPv4 address hides inside
an IPv6 one (mapped, 6to4, Teredo, NAT64). Resolving first catches names and odd spellings
(``localhost``, ``2130706433``, ``0x7f.1``) that a look at the text alone would miss.

The check runs when a job is started and again before every crawl, because DNS answers change.
And the client connects only where a check looked: :class:`PinnedAddressTransport` resolves the
host once per client, checks every address, and sends each request to that checked address
(the name still goes in ``Host`` and in TLS's SNI and certificate check). A name whose answer
changes between the check and the connection (DNS rebinding) cannot steer a request inside.
Redirects need no check of their own: the WooCommerce client never follows them
(``follow_redirects=False``), so a store cannot bounce a request to an internal address.

Names are resolved by c-ares (``aiodns``), not by the system's ``getaddrinfo`` in the loop's
thread pool: there, a name server that never answers holds one pool thread per look-up (the
pool is small and shared with everything else the process runs) long after the caller gave up,
since a running ``getaddrinfo`` cannot be cancelled. c-ares sends the queries itself and waits on
its sockets; each look-up gets its own channel, closed on the way out, also when the caller's
timeout cancels it, which cancels its queries and ends the channel's event thread. c-ares reads
``/etc/hosts`` and ``/etc/resolv.conf`` as the system does (NSS modules such as mDNS or LDAP are
not consulted: a store has a public name). Numeric hosts are read the way the system's resolver
(``inet_aton``) reads them, so ``0177.0.0.1`` is 127.0.0.1 here as it is to the socket layer.

``WOOSYNC_ALLOW_PRIVATE_URLS=true`` skips the address check (the demo and the tests run the store
simulator on 127.0.0.1); the shape check applies always.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from urllib.parse import urlsplit

import aiodns
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# host, port -> the addresses a connection could go to
Resolver = Callable[[str, int], Awaitable[Iterable[str]]]

RESOLVE_TIMEOUT_S = 5.0
RESOLVE_TRIES = 2  # per name server; c-ares' own bound, below the caller's timeout
DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 6052's well-known NAT64 prefix is "global" to ipaddress, but a NAT64 gateway forwards
# 64:ff9b::7f00:1 to 127.0.0.1 in its own network.
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


class StoreUrlError(ValueError):
    """A store URL that must not be used; the message is safe to show to the caller."""


class StoreUrlNotAllowed(StoreUrlError):
    """The URL's shape is wrong, or its host is (or resolves to) a non-public address."""


class StoreUrlUnresolvable(StoreUrlError):
    """The URL's host has no address (or DNS did not answer in time)."""


def _translated_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped or NAT64 address really reaches."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _tunnelled_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 end point of a 6to4 or Teredo address (the Teredo client)."""
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_public_address(address: IPAddress) -> bool:
    """True only for a globally routable unicast address, judged by the IPv4 it may reach."""
    if isinstance(address, ipaddress.IPv6Address):
        translated = _translated_ipv4(address)
        if translated is not None:
            return is_public_address(translated)
        tunnelled = _tunnelled_ipv4(address)
        if tunnelled is not None and not is_public_address(tunnelled):
            return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
    )


def _parse_address(text: str) -> IPAddress:
    return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")


def _numeric_address(host: str) -> str | None:
    """``host`` as an address if it is one, read as the socket layer reads it, else None."""
    try:
        return str(_parse_address(host))
    except ValueError:
        pass
    try:  # the legacy IPv4 spellings: 2130706433, 0x7f.1, 0177.0.0.1, 0
        return socket.inet_ntoa(socket.inet_aton(host))
    except (OSError, UnicodeError, ValueError):
        return None


async def cares_resolve(
    host: str,
    port: int,
    *,
    nameservers: Sequence[str] | None = None,
    timeout_s: float = RESOLVE_TIMEOUT_S,
) -> list[str]:
    """Every address of ``host`` (IPv4 first), without a thread; raises OSError if none.

    ``nameservers`` (``"ip"`` or ``"ip:port"``) replace the system's (tests). One c-ares
    channel per look-up, closed on the way out, also when the caller's timeout cancels it.
    """
    numeric = _numeric_address(host)
    if numeric is not None:
        return [numeric]
    name = host.rstrip(".").encode("idna").decode("ascii")  # UnicodeError for a bad name
    resolver = aiodns.DNSResolver(
        nameservers=nameservers, timeout=timeout_s / RESOLVE_TRIES, tries=RESOLVE_TRIES
    )
    try:
        result = await resolver.getaddrinfo(name, port=port, type=socket.SOCK_STREAM)
    except aiodns.error.DNSError as exc:
        raise socket.gaierror(socket.EAI_NONAME, "the host name could not be resolved") from exc
    finally:
        await resolver.close()
    found = [_node_address(node.addr) for node in result.nodes]
    return sorted(dict.fromkeys(found), key=lambda text: ":" in text)  # IPv4 first, stable


def _node_address(addr: tuple[object, ...]) -> str:
    address = addr[0]
    return address.decode("ascii") if isinstance(address, bytes) else str(address)


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address of ``host`` with the system's hosts file and name servers (c-ares)."""
    return await cares_resolve(host, port)


def split_store_url(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an http(s) URL without credentials, or StoreUrlNotAllowed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise StoreUrlNotAllowed("the store URL is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise StoreUrlNotAllowed("the store URL must be http or https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise StoreUrlNotAllowed("the store URL must not contain a user name or password")
    if not parts.hostname:
        raise StoreUrlNotAllowed("the store URL must name a host")
    return scheme, parts.hostname, port or DEFAULT_PORTS[scheme]


async def ensure_public_url(
    url: str,
    *,
    allow_private: bool,
    resolve: Resolver = system_resolve,
    timeout_s: float = RESOLVE_TIMEOUT_S,
) -> None:
    """Return if the store URL may be used; raise :class:`StoreUrlError` saying why not."""
    _, host, port = split_store_url(url)
    if not allow_private:
        await public_address(host, port, resolve=resolve, timeout_s=timeout_s)


async def public_address(
    host: str,
    port: int,
    *,
    resolve: Resolver = system_resolve,
    timeout_s: float = RESOLVE_TIMEOUT_S,
    allow_private: bool = False,
) -> str:
    """The address to connect to for ``host``; raise :class:`StoreUrlError` unless it is public.

    Every resolved address must be public: a name with one public and one private address is
    refused, since a client may connect to either. ``allow_private`` skips that check only.
    """
    try:
        async with asyncio.timeout(timeout_s):
            found = list(await resolve(host, port))
    except (OSError, UnicodeError, TimeoutError):  # gaierror is an OSError
        raise StoreUrlUnresolvable("the store's host name could not be resolved") from None
    if not found:
        raise StoreUrlUnresolvable("the store's host name could not be resolved")
    for text in found:
        try:
            address = _parse_address(text)
        except ValueError:
            raise StoreUrlNotAllowed("the store's host resolves to an unusable address") from None
        if not allow_private and not is_public_address(address):
            raise StoreUrlNotAllowed(
                "the store's address is not public (private, loopback, link-local or reserved "
                "addresses are not allowed)"
            )
    return str(_parse_address(found[0]))


class PinnedAddressTransport(httpx.AsyncBaseTransport):
    """Sends every request to the address checked for its host, resolved once per transport.

    The request keeps its name for ``Host`` and, through httpcore's ``sni_hostname`` extension,
    for TLS (SNI and the certificate's host name check), so a store behaves as if reached by
    name. A client lives for one crawl or one check, so its stores' addresses are re-checked for
    every crawl. ``allow_private`` (``WOOSYNC_ALLOW_PRIVATE_URLS``) skips the address check
    but still resolves here, so no look-up goes through the system resolver's thread pool.
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        resolve: Resolver = system_resolve,
        timeout_s: float = RESOLVE_TIMEOUT_S,
        allow_private: bool = False,
    ) -> None:
        self._inner = inner
        self._allow_private = allow_private
        self._resolve = resolve
        self._timeout_s = timeout_s
        self._pinned: dict[tuple[str, int], str] = {}
        self._lock = asyncio.Lock()

    async def _address(self, host: str, port: int) -> str:
        async with self._lock:  # concurrent first requests share one resolution
            if (host, port) not in self._pinned:
                self._pinned[host, port] = await public_address(
                    host,
                    port,
                    resolve=self._resolve,
                    timeout_s=self._timeout_s,
                    allow_private=self._allow_private,
                )
            return self._pinned[host, port]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        port = url.port or DEFAULT_PORTS.get(url.scheme, 443)
        address = await self._address(url.host, port)
        wire_request = httpx.Request(
            request.method,
            url.copy_with(host=address),
            headers=request.headers,  # with the Host header httpx derived from the name
            stream=request.stream,
            extensions={**request.extensions, "sni_hostname": url.host},
        )
        return await self._inner.handle_async_request(wire_request)

    async def aclose(self) -> None:
        await self._inner.aclose()
