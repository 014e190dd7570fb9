"""``woosync health [SERVICE]``: the container health check (Dockerfile ``HEALTHCHECK``, compose).

Asks a service's own HTTP port, on this host, for ``/healthz`` (or ``/readyz`` with
``--ready``) and exits 0 on a 200, 1 otherwise. Without SERVICE it asks every service's
configured port and passes when one answers: an image runs one service per container, and the
image's ``HEALTHCHECK`` does not know which.
"""

from __future__ import annotations

import sys

import click
import httpx

from shared.settings import Settings

SERVICES = ("api", "tracker", "fetcher", "syncer")
TIMEOUT_S = 3.0
_ANY_ADDRESS = {"", "0.0.0.0", "::"}  # noqa: S104 (a bind address, compared, never bound)


def probe_url(settings: Settings, service: str, path: str) -> str:
    """The service's probe URL on this host (a wildcard bind address is asked on loopback)."""
    host = getattr(settings, f"{service}_host")
    port = getattr(settings, f"{service}_port")
    if host in _ANY_ADDRESS:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=TIMEOUT_S).status_code == 200
    except httpx.HTTPError:
        return False


@click.command()
@click.argument("service", required=False, type=click.Choice(SERVICES))
@click.option("--ready", is_flag=True, help="Ask /readyz (database and broker) instead.")
def health(service: str | None, ready: bool) -> None:
    """Exit 0 when SERVICE (or any service) on this host answers its health check."""
    settings = Settings()
    path = "/readyz" if ready else "/healthz"
    for name in (service,) if service else SERVICES:
        if getattr(settings, f"{name}_port") and answers(probe_url(settings, name, path)):
            click.echo(f"{name}: ok")
            return
    click.echo(f"{service or 'no service'}: {path} did not answer 200", err=True)
    sys.exit(1)
