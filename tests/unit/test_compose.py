"""docker-compose.yml names only things that exist: modules, settings, ports, files; and it is
safe and observable as docs/operations.md says: health checks everywhere, the shovel plugins
enabled, no infrastructure port on every interface, no default passwords, replicated
consumers, and a Dockerfile HEALTHCHECK."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SETTINGS_FIELDS = {f"WOOSYNC_{name.upper()}" for name in Settings.model_fields}


def _env(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def _interpolated(value: str) -> str:
    """``value`` as compose passes it once ``${VAR:?...}`` is set (to ``secret``)."""
    return re.sub(r"\$\{[^}]*\}", "secret", value)


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
        assert urlsplit(_interpolated(env["WOOSYNC_DATABASE_URL"])).username == APP_ROLE, name
        assert "WOOSYNC_ADMIN_DATABASE_URL" not in env, f"{name} must not hold the owner's URL"
    migrate = _env(SERVICES["migrate"])
    admin = urlsplit(_interpolated(migrate["WOOSYNC_ADMIN_DATABASE_URL"]))
    assert admin.username and admin.username != APP_ROLE


LONG_RUNNING = ("rabbitmq", "postgres", "api", "fetcher", "syncer", "tracker", "woosim")


def test_every_long_running_service_has_a_health_check() -> None:
    for name in LONG_RUNNING:
        check = SERVICES[name].get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
    assert SERVICES["migrate"]["healthcheck"] == {"disable": True}  # a one-shot job


def test_woosync_services_check_their_own_health_endpoint() -> None:
    from click.testing import CliRunner

    from woosync.cli import main

    for name in ("api", "fetcher", "syncer", "tracker"):
        test = SERVICES[name]["healthcheck"]["test"]
        assert test == ["CMD", "woosync", "health", name], name
    help_text = CliRunner().invoke(main, ["health", "--help"]).output
    assert "api|tracker|fetcher|syncer" in help_text


def test_consumers_listen_where_their_health_check_asks() -> None:
    for name, port in (("fetcher", "8002"), ("syncer", "8003")):
        env = _env(SERVICES[name])
        assert env[f"WOOSYNC_{name.upper()}_PORT"] == port
        assert env[f"WOOSYNC_{name.upper()}_HOST"] == "0.0.0.0"
        assert "ports" not in SERVICES[name], f"{name}: scraped on the compose network only"


def test_rabbitmq_enables_the_shovel_plugins_of_the_console() -> None:
    mounts = SERVICES["rabbitmq"]["volumes"]
    mount = next(m for m in mounts if m.split(":")[1] == "/etc/rabbitmq/enabled_plugins")
    text = (ROOT / mount.split(":")[0]).read_text().strip()
    assert text.startswith("[") and text.endswith("]."), "an Erlang list ending with a period"
    plugins = {p.strip() for p in text[1:-2].split(",")}
    assert {
        "rabbitmq_management",
        "rabbitmq_prometheus",
        "rabbitmq_shovel",
        "rabbitmq_shovel_management",
    } <= plugins


def test_infrastructure_is_not_published_on_every_interface() -> None:
    for name in ("rabbitmq", "postgres", "woosim"):
        for port in SERVICES[name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_no_password_has_a_default() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in ("POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "WOOSYNC_APP_DB_PASSWORD"):
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses, secret
        assert all(use.startswith(":?") for use in uses), f"{secret} has a default: {uses}"
    assert re.findall(r"\$\{WOOSYNC_SECRET_KEY([^}]*)\}", text)[0].startswith(":?")
    assert SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${")
    assert SERVICES["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"].startswith("${")
    for name in ("api", "fetcher", "syncer", "tracker"):
        env = _env(SERVICES[name])
        assert "guest" not in env["WOOSYNC_AMQP_URL"]
        assert ":woosync@" not in env["WOOSYNC_AMQP_URL"]


def test_consumers_are_replicated() -> None:
    assert SERVICES["fetcher"]["deploy"]["replicas"] >= 2
    assert SERVICES["syncer"]["deploy"]["replicas"] >= 2


def test_the_image_has_a_health_check() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^HEALTHCHECK .*\\\n\s+CMD \["woosync", "health"\]', dockerfile, re.M)
