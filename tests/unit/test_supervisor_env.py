"""`woosync up` hands its services everything but the schema owner's database URL."""

from __future__ import annotations

from woosync.supervisor import service_environment


def test_services_never_get_the_owners_database_url() -> None:
    env = service_environment(
        {
            "WOOSYNC_DATABASE_URL": "postgresql://woosync_app@db/woosync",
            "WOOSYNC_ADMIN_DATABASE_URL": "postgresql://owner:pw@db/woosync",
            "PATH": "/usr/bin",
        }
    )
    assert env == {
        "WOOSYNC_DATABASE_URL": "postgresql://woosync_app@db/woosync",
        "PATH": "/usr/bin",
        "PYTHONUNBUFFERED": "1",
    }
