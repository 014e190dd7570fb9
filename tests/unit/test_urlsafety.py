"""Store URL checks against SSRF: address classes, resolution, and the private-URL switch.

The system resolver is used for names that need no network (``localhost``, numeric spellings);
public names are resolved by a stand-in resolver, since tests have no internet.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

import pytest

from shared.urlsafety import (
    StoreUrlNotAllowed,
    StoreUrlUnresolvable,
    ensure_public_url,
    is_public_address,
    split_store_url,
)

PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
NOT_PUBLIC = [
    "127.0.0.1",  # loopback
    "127.255.255.254",
    "10.1.2.3",  # private
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # link-local (cloud metadata)
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",  # unspecified
    "224.0.0.1",  # multicast
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "192.0.2.10",  # documentation
    "198.18.0.1",  # benchmarking
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo whose client is 127.0.0.1
]


@pytest.mark.parametrize("text", PUBLIC)
def test_public_addresses_pass(text: str) -> None:
    assert is_public_address(ipaddress.ip_address(text))


@pytest.mark.parametrize("text", NOT_PUBLIC)
def test_internal_addresses_are_refused(text: str) -> None:
    assert not is_public_address(ipaddress.ip_address(text))


def resolver(*addresses: str):  # type: ignore[no-untyped-def]
    seen: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> Iterable[str]:
        seen.append((host, port))
        return addresses

    resolve.seen = seen  # type: ignore[attr-defined]
    return resolve


async def test_a_name_with_only_public_addresses_passes() -> None:
    resolve = resolver("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c")
    await ensure_public_url("https://Shop.Example/wp", allow_private=False, resolve=resolve)
    assert resolve.seen == [("shop.example", 443)]
    await ensure_public_url("http://shop.example:8080", allow_private=False, resolve=resolve)
    assert resolve.seen[-1] == ("shop.example", 8080)


@pytest.mark.parametrize("addresses", [["127.0.0.1"], ["93.184.215.14", "10.0.0.5"], ["fe80::1%2"]])
async def test_a_name_with_any_internal_address_is_refused(addresses: list[str]) -> None:
    with pytest.raises(StoreUrlNotAllowed, match="not public"):
        await ensure_public_url(
            "https://shop.example", allow_private=False, resolve=resolver(*addresses)
        )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://localhost",
        "http://2130706433",  # 127.0.0.1 as one decimal number
        "http://0x7f.1",  # 127.0.0.1 in hex, short form
        "http://0177.0.0.1",  # octal
        "http://0/",
        "http://[::1]:9000",
        "http://[::ffff:127.0.0.1]",
        "http://169.254.169.254/latest/meta-data",
        "https://10.0.0.1",
    ],
)
async def test_internal_hosts_are_refused_after_real_resolution(url: str) -> None:
    with pytest.raises(StoreUrlNotAllowed):
        await ensure_public_url(url, allow_private=False)


async def test_allow_private_skips_the_address_check_but_not_the_shape() -> None:
    await ensure_public_url("http://127.0.0.1:8080", allow_private=True)
    await ensure_public_url("http://does-not-resolve.invalid", allow_private=True)
    with pytest.raises(StoreUrlNotAllowed, match="user name or password"):
        await ensure_public_url("http://admin:pw@127.0.0.1", allow_private=True)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("ftp://shop.example", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("gopher://127.0.0.1:6379/_INFO", "http or https"),
        ("shop.example", "http or https"),
        ("https://user@shop.example", "user name or password"),
        ("https://user:pw@shop.example", "user name or password"),
        ("https://", "host"),
        ("https://shop.example:99999", "not a valid URL"),
    ],
)
async def test_bad_shapes_are_refused_before_any_lookup(url: str, complaint: str) -> None:
    resolve = resolver("8.8.8.8")
    with pytest.raises(StoreUrlNotAllowed, match=complaint):
        await ensure_public_url(url, allow_private=False, resolve=resolve)
    assert resolve.seen == []


async def test_unresolvable_and_silent_dns_are_told_apart_from_refusal() -> None:
    async def fails(host: str, port: int) -> Iterable[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def hangs(host: str, port: int) -> Iterable[str]:
        await asyncio.Event().wait()
        return []

    for resolve in (fails, hangs, resolver()):
        with pytest.raises(StoreUrlUnresolvable):
            await ensure_public_url(
                "https://shop.example", allow_private=False, resolve=resolve, timeout_s=0.05
            )
    with pytest.raises(StoreUrlUnresolvable):
        await ensure_public_url("https://no-such-host.invalid", allow_private=False)


def test_split_gives_default_ports() -> None:
    assert split_store_url("https://shop.example") == ("https", "shop.example", 443)
    assert split_store_url("HTTP://Shop.Example:81/x") == ("http", "shop.example", 81)
    assert split_store_url("http://[::1]/") == ("http", "::1", 80)


async def test_pinned_transport_sends_to_the_checked_address_and_keeps_the_name() -> None:
    import httpx

    from shared.urlsafety import PinnedAddressTransport

    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # the second answer rebinds inside
    seen: list[httpx.Request] = []

    async def resolve(host: str, port: int) -> list[str]:
        return next(answers)

    def store(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    pinned = PinnedAddressTransport(httpx.MockTransport(store), resolve=resolve)
    async with httpx.AsyncClient(transport=pinned) as client:
        for _ in range(3):
            await client.get("https://shop.example:8443/wp-json/wc/v3/customers?page=1")
    assert [str(r.url) for r in seen] == [
        "https://93.184.216.34:8443/wp-json/wc/v3/customers?page=1"
    ] * 3
    assert {r.headers["host"] for r in seen} == {"shop.example:8443"}
    assert {r.extensions["sni_hostname"] for r in seen} == {"shop.example"}


async def test_pinned_transport_refuses_before_sending_anything() -> None:
    import httpx

    from shared.urlsafety import PinnedAddressTransport

    async def resolve(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "169.254.169.254"]  # one public, one inside: refused

    def store(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may reach the network")

    pinned = PinnedAddressTransport(httpx.MockTransport(store), resolve=resolve)
    async with httpx.AsyncClient(transport=pinned) as client:
        with pytest.raises(StoreUrlNotAllowed):
            await client.get("http://shop.example/wp-json/wc/v3/customers")
