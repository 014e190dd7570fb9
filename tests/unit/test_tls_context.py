"""Store clients share one TLS context per CA bundle in a process (``shared.woocommerce.client``):
building one reads the whole bundle (tens of milliseconds of CPU), which each start's store
check and each crawl used to pay."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

from shared.woocommerce.client import _tls_verification


def test_clients_share_one_context_per_bundle(tmp_path: Path) -> None:
    default = _tls_verification(True)
    assert isinstance(default, ssl.SSLContext) and default.verify_mode == ssl.CERT_REQUIRED
    assert _tls_verification(True) is default
    bundle = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    own = _tls_verification(str(bundle))
    assert isinstance(own, ssl.SSLContext) and own is not default
    assert _tls_verification(str(bundle)) is own
    assert own.get_ca_certs() != default.get_ca_certs()
    assert _tls_verification(False) is False
