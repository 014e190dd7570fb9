"""docker-compose.yml names only things that exist: modules, settings, ports, files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SETTINGS_FIELDS = {f"WOOSYNC_{name.upper()}" for name in Settings.model_fields}


def _env(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def test_every_woosync_service_is_present() -> None:
    for name in ("api", "fetcher", "syncer", "tracker", "rabbitmq", "postgres", "woosim"):
        assert name in SERVICES, name


def test_every_python_module_exists() -> None:
    for name, service in SERVICES.items():
        command = service.get("command") or []
        if command[:2] == ["python", "-m"]:
            module = command[2]
            assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
            assert importlib.util.find_spec(f"{module}.__main__") is not None or module.endswith(
                "__main__"
            ), f"{name}: {module} cannot run with -m"


def test_every_environment_variable_is_a_setting() -> None:
    for name, service in SERVICES.items():
        for key in _env(service):
            if key.startswith("WOOSYNC_"):
                assert key in SETTINGS_FIELDS, f"{name}: {key} is not a Settings field"


def test_published_ports_match_configured_ports() -> None:
    for name, port_key in (("api", "WOOSYNC_API_PORT"), ("tracker", "WOOSYNC_TRACKER_PORT")):
        service = SERVICES[name]
        configured = _env(service)[port_key]
        published = [p.split(":")[1] for p in service["ports"]]
        assert configured in published, f"{name} listens on {configured}, publishes {published}"
        assert _env(service)[port_key.replace("PORT", "HOST")] == "0.0.0.0"


def test_simulator_options_exist() -> None:
    from tools.woosim.cli import build_parser  # the simulator's own option parser

    command = SERVICES["woosim"]["command"]
    args = build_parser().parse_args(command[3:])
    assert args.port == int(SERVICES["woosim"]["ports"][0].split(":")[1])


def test_services_use_the_image_that_the_dockerfile_builds() -> None:
    assert (ROOT / "Dockerfile").exists()
    for name in ("api", "fetcher", "syncer", "tracker", "migrate"):
        assert SERVICES[name]["build"] == ".", name
    assert SERVICES["syncer"]["deploy"]["replicas"] >= 2
    assert SERVICES["migrate"]["command"] == ["woosync", "migrate"]


def test_services_connect_as_the_role_row_level_security_binds() -> None:
    from urllib.parse import urlsplit

    from shared.db import APP_ROLE

    for name in ("api", "fetcher", "syncer", "tracker"):
        env = _env(SERVICES[name])
        assert urlsplit(env["WOOSYNC_DATABASE_URL"]).username == APP_ROLE, name
        assert "WOOSYNC_ADMIN_DATABASE_URL" not in env, f"{name} must not hold the owner's URL"
    migrate = _env(SERVICES["migrate"])
    assert urlsplit(migrate["WOOSYNC_ADMIN_DATABASE_URL"]).username != APP_ROLE
