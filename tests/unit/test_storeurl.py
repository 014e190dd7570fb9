"""One spelling per store URL: the rules that decide whether two starts name the same store."""

from __future__ import annotations

import pytest

from shared.storeurl import normalize_store_url, store_identity


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        # case of scheme and host (never of the path)
        ("HTTPS://Shop.EXAMPLE", "https://shop.example"),
        ("https://shop.example/WP/Shop", "https://shop.example/WP/Shop"),
        # default ports go, others stay
        ("https://shop.example:443", "https://shop.example"),
        ("http://shop.example:80/", "http://shop.example"),
        ("https://shop.example:80", "https://shop.example:80"),
        ("http://shop.example:443", "http://shop.example:443"),
        ("https://shop.example:8443/", "https://shop.example:8443"),
        ("https://shop.example:", "https://shop.example"),
        # trailing slashes, one or many; a sub-path is kept
        ("https://shop.example/", "https://shop.example"),
        ("https://shop.example///", "https://shop.example"),
        ("https://shop.example/wordpress/", "https://shop.example/wordpress"),
        ("https://shop.example/a//b/", "https://shop.example/a//b"),
        ("https://shop.example/caf%C3%A9/", "https://shop.example/caf%C3%A9"),
        # internationalized names in their IDNA form; an xn-- name is already that
        ("https://Bücher.example/", "https://xn--bcher-kva.example"),
        ("https://ÉCOLE.example", "https://xn--cole-9oa.example"),
        ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
        ("https://XN--BCHER-KVA.example", "https://xn--bcher-kva.example"),
        ("https://店.例え.jp/shop", "https://xn--hxt.xn--r8jz45g.jp/shop"),
        # address literals
        ("http://127.0.0.1:8100/", "http://127.0.0.1:8100"),
        ("https://[2001:DB8:0:0::1]:443/wp/", "https://[2001:db8::1]/wp"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_normalized(raw: str, normalized: str) -> None:
    assert normalize_store_url(raw) == normalized
    assert normalize_store_url(normalized) == normalized  # a fixed point


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ("https://user@shop.example", "user name or password"),
        ("https://shop.example/?page=1", "query or fragment"),
        ("https://shop.example#x", "query or fragment"),
        ("https://shop.example:70000", "invalid port"),
        ("gopher://shop.example", "http or https"),
        ("https://\u2603.example", "internationalized"),
    ],
)
def test_refused(raw: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        normalize_store_url(raw)


def test_http_and_https_of_one_host_are_one_store() -> None:
    spellings = [
        "http://Shop.example/",
        "https://shop.example:443",
        "HTTPS://SHOP.EXAMPLE//",
        "http://shop.example:80",
    ]
    assert {store_identity(normalize_store_url(url)) for url in spellings} == {"shop.example"}


def test_other_ports_and_paths_are_other_stores() -> None:
    urls = [
        "https://shop.example",
        "https://shop.example:8443",
        "https://shop.example/outlet",
        "https://shop.example/Outlet",
        "https://outlet.shop.example",
    ]
    identities = {store_identity(normalize_store_url(url)) for url in urls}
    assert len(identities) == len(urls)


def test_ascii_labels_beside_an_internationalized_one_are_kept() -> None:
    assert normalize_store_url("https://My_Shop.Bücher.example") == (
        "https://my_shop.xn--bcher-kva.example"
    )
