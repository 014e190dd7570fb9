"""``python -m services.syncer``: settings, logging, and the FastStream app; nothing else.

FastStream turns SIGTERM and SIGINT into a graceful stop: the subscriber stops taking messages,
running handlers get ``graceful_timeout`` (see ``shared.broker``) to finish, then the pool closes.
"""

from __future__ import annotations

import asyncio

from services.syncer.app import build_app
from shared.db import require_app_role
from shared.logs import configure
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    log = configure("syncer", settings.log_level)
    require_app_role(settings.database_url, log)
    asyncio.run(build_app(settings).run())


if __name__ == "__main__":
    main()
