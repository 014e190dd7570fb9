"""``python -m services.syncer``: ``shared.runtime.start_process``, then the FastStream app.

FastStream turns SIGTERM and SIGINT into a graceful stop: the subscriber stops taking messages,
running handlers get ``graceful_timeout`` (see ``shared.broker``) to finish, then the pool closes.
"""

from __future__ import annotations

import asyncio

from services.syncer.app import build_app
from shared.runtime import start_process


def main() -> None:
    settings, _ = start_process("syncer")
    asyncio.run(build_app(settings).run())


if __name__ == "__main__":
    main()
