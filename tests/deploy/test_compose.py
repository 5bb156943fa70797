"""docker-compose.yml: valid against the Compose schema (``docker-compose config``, Debian's
``docker-compose`` package, needs no Docker engine), and the stack the issue asks for."""

from __future__ import annotations

import os

import yaml

from tests.deploy.tools import DEPLOY
from tests.deploy.tools import executable
from tests.deploy.tools import run

COMPOSE = DEPLOY / "docker-compose.yml"
HINT = "apt-get install -y docker-compose"


def _env() -> dict[str, str]:
    example = (DEPLOY / ".env.example").read_text().splitlines()
    names = [line.split("=", 1)[0] for line in example if line and not line.startswith("#")]
    return {**os.environ, **{n: "test-value" for n in names}}


def test_compose_file_is_valid():
    out = run([executable("docker-compose", HINT), "-f", str(COMPOSE), "config", "-q"], env=_env())
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_validation_can_fail(tmp_path):
    bad = yaml.safe_load(COMPOSE.read_text())
    bad["services"]["api"]["healthcheck_"] = {}
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(bad))
    out = run([executable("docker-compose", HINT), "-f", str(path), "config", "-q"], env=_env())
    assert out.returncode != 0


def test_compose_needs_the_passwords_from_outside():
    """No password is in the file: without deploy/.env the configuration is refused."""
    env = {k: v for k, v in _env().items() if k not in ("POSTGRES_PASSWORD",)}
    out = run([executable("docker-compose", HINT), "-f", str(COMPOSE), "config", "-q"], env=env)
    assert out.returncode != 0 and "POSTGRES_PASSWORD" in out.stderr


def test_the_stack():
    out = run([executable("docker-compose", HINT), "-f", str(COMPOSE), "config"], env=_env())
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert {"postgres", "redis", "rabbitmq", "prometheus", "grafana", "api", "worker", "manager"} <= set(
        services
    )
    for role in ("api", "worker", "manager"):
        s = services[role]
        assert s["image"] == services["migrate"]["image"], "one image for every role"
        assert s["build"]["dockerfile"] == "deploy/Dockerfile"
        assert s["command"][0] == role
        assert s["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert s["read_only"] is True and "ALL" in s["cap_drop"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for dep in ("postgres", "redis", "rabbitmq"):
        assert "healthcheck" in services[dep], dep
    assert services["worker"]["environment"]["TASKMILL_METRICS_PORT"] == "9100"
