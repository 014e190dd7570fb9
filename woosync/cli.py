"""The ``woosync`` console script (click: subcommands, help and errors without our own parser)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click

from shared import db
from shared.settings import Settings
from woosync.cleanup import cleanup
from woosync.conflicts import conflicts
from woosync.connections import connections
from woosync.dlq import dlq
from woosync.health import health
from woosync.jobs import jobs
from woosync.keys import key
from woosync.schedule import schedule
from woosync.secrets import secrets


@click.group()
def main() -> None:
    """woosync: WooCommerce customers into MantisNXT's PostgreSQL, exactly once."""


@main.command()
@click.option("--down", is_flag=True, help="Revert instead of apply.")
@click.option("--steps", default=1, show_default=True, help="How many migrations --down reverts.")
def migrate(down: bool, steps: int) -> None:
    """Create the database if needed and apply (or revert) migrations/ in order.

    Runs as the schema's owner (WOOSYNC_ADMIN_DATABASE_URL); gives the services' role the
    password in WOOSYNC_DATABASE_URL, if it has one."""
    settings = Settings()
    if down:
        done = asyncio.run(db.migrate_down(settings.admin_database_url, steps))
        verb = "reverted"
    else:
        try:  # a bad WOOSYNC_DATABASE_URL is refused before anything is applied
            done = asyncio.run(
                db.migrate_up(settings.admin_database_url, app_dsn=settings.database_url)
            )
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        verb = "applied"
    for migration in done:
        click.echo(f"{verb} {migration.version:04d}_{migration.name}")
    if not done:
        click.echo("nothing to do")


@main.group()
def org() -> None:
    """Organisations (tenants)."""


@org.command("create")
@click.argument("name")
def org_create(name: str) -> None:
    """Create an org and its first API key; prints {"org_id", "api_key"} (the key is shown once)."""
    from shared.auth import create_org

    async def run() -> tuple[str, str]:
        pool = await db.create_pool(
            Settings().admin_database_url, min_size=1, max_size=1, operator=True
        )
        try:
            org_id, key = await create_org(pool, name)
        finally:
            await pool.close()
        return str(org_id), key

    org_id, key = asyncio.run(run())
    click.echo(json.dumps({"org_id": org_id, "api_key": key}))


@main.command()
@click.option("--no-migrate", is_flag=True, help="Skip applying migrations first.")
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(["api", "fetcher", "syncer", "tracker"]),
    help="Run only these services (repeatable).",
)
def up(no_migrate: bool, only: tuple[str, ...]) -> None:
    """Migrate, then run all four services with their logs interleaved; Ctrl-C stops them."""
    from woosync.supervisor import SERVICES, Supervisor

    if not no_migrate:
        settings = Settings()
        asyncio.run(db.migrate_up(settings.admin_database_url, app_dsn=settings.database_url))
    supervisor = Supervisor(only or SERVICES, colour=sys.stdout.isatty())
    sys.exit(asyncio.run(supervisor.run()))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def sim(ctx: click.Context) -> None:
    """Run the WooCommerce simulator (see `woosync sim --help`)."""
    from tools.woosim.cli import main as sim_main

    sim_main(list(ctx.args))


@main.command()
@click.option("--customers", default=10_000, show_default=True)
@click.option("--seed", default=42, show_default=True)
def demo(customers: int, seed: int) -> None:
    """Bring up the stack and a simulated store, sync it, show progress, print a summary."""
    from woosync.demo import run_demo

    log_path = Path(".woosync/demo-services.log")
    log_path.parent.mkdir(exist_ok=True)
    click.echo(f"service logs: {log_path}")
    with log_path.open("w") as service_log:
        code = asyncio.run(run_demo(customers=customers, seed=seed, service_log=service_log))
    sys.exit(code)


main.add_command(secrets)
main.add_command(health)
main.add_command(dlq)
main.add_command(key)
main.add_command(connections)
main.add_command(cleanup)
main.add_command(schedule)
main.add_command(jobs)
main.add_command(conflicts)

if __name__ == "__main__":
    main()
