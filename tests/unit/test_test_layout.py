"""The tests have the structure the code has: no module of tests/ imports a test module.

What several test modules share lives in tests/helpers.py, tests/factories.py,
tests/strategies.py, tests/e2e's harness modules or a conftest, so that a test module can be
read, run and changed on its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imported(source: str, module: str) -> set[str]:
    """Every module that ``module`` (its text: ``source``) imports, anywhere in it (functions
    included), as absolute names; for ``from x import y``, both ``x`` and ``x.y`` (y may be a
    module)."""
    package = module.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def is_test_module(name: str) -> bool:
    return name.startswith("tests.") and name.rsplit(".", 1)[-1].startswith("test_")


def test_no_module_of_the_tests_imports_a_test_module() -> None:
    paths = sorted(TESTS.rglob("*.py"))
    assert len([p for p in paths if p.name.startswith("test_")]) > 50  # the walk found them
    offending = sorted(
        f"{module} imports {name}"
        for path in paths
        for module in [_module_name(path)]
        for name in imported(path.read_text(), module)
        if is_test_module(name)
    )
    assert offending == []


@pytest.mark.parametrize(
    "source",
    [
        "from tests.integration.test_api import serving",
        "import tests.e2e.test_faults_store",
        "from tests.unit import test_mapping_properties",
        "from .test_api import Api",
        "from ..e2e.test_faults_store import running",
        "def f():\n    from tests.integration.test_dlq_replay import woosync",
    ],
)
def test_the_check_sees_every_form_of_import(source: str) -> None:
    assert any(map(is_test_module, imported(source, "tests.integration.test_probe")))


def test_the_shared_modules_are_not_test_modules() -> None:
    source = (
        "from tests.helpers import wait_until\nfrom tests.factories import make_job\n"
        "from tests.e2e.harness import Stack\nfrom tests.conftest import AMQP_URL\n"
        "from . import conftest\nfrom tests.strategies import customers\n"
    )
    assert not any(map(is_test_module, imported(source, "tests.integration.test_probe")))
