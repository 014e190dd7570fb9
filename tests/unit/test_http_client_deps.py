"""The store client's HTTP stack finds its event loop without searching the import path.

httpcore (under httpx) runs ``import sniffio`` on every request to learn which event loop it is
on. With sniffio missing, which recent anyio releases no longer pull in, each of those imports
failed after a search of every ``sys.path`` entry: about a third of the store client's CPU per
page (docs/performance.md, "Throughput"). pyproject.toml names it for that reason.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys

from httpcore._synchronization import current_async_library


def test_sniffio_is_installed_so_httpcore_imports_it_once() -> None:
    assert importlib.util.find_spec("sniffio") is not None


def test_httpcore_detects_asyncio_from_the_imported_module() -> None:
    async def detect() -> str:
        return current_async_library()

    assert asyncio.run(detect()) == "asyncio"
    assert "sniffio" in sys.modules  # imported once, found in sys.modules from then on
