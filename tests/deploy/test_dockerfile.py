"""deploy/Dockerfile, parsed (``dockerfile-parse``): multi-stage, slim, non-root, one image for
every role, a health check."""

from __future__ import annotations

import pytest

from tests.deploy.tools import DEPLOY
from tests.deploy.tools import module

DOCKERFILE = DEPLOY / "Dockerfile"


@pytest.fixture(scope="module")
def parsed():
    module("dockerfile_parse", "pip install dockerfile-parse")
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(fileobj=open(DOCKERFILE, "rb"))  # noqa: SIM115 - read at once below
    try:
        return parser.structure, parser.baseimage, None
    finally:
        parser.fileobj.close()


def test_multi_stage_on_a_slim_base(parsed):
    structure, baseimage, _ = parsed
    froms = [i["value"] for i in structure if i["instruction"] == "FROM"]
    assert len(froms) >= 2
    assert "slim" in baseimage, baseimage
    assert any(i["instruction"] == "COPY" and "--from=build" in i["value"] for i in structure)


def test_runs_as_a_numeric_non_root_user(parsed):
    structure, _, _ = parsed
    last_from = max(n for n, i in enumerate(structure) if i["instruction"] == "FROM")
    users = [i["value"].strip() for i in structure[last_from:] if i["instruction"] == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, "numeric, so Kubernetes' runAsNonRoot can check it"


def test_one_image_for_every_role(parsed):
    structure, _, _ = parsed
    entry = [i["value"] for i in structure if i["instruction"] == "ENTRYPOINT"]
    cmd = [i["value"] for i in structure if i["instruction"] == "CMD"]
    assert entry == ['["taskmill-entrypoint"]'] and cmd == ['["api"]']
    assert 'exec taskmill "$@"' in (DEPLOY / "docker-entrypoint.sh").read_text()
    assert any(i["instruction"] == "HEALTHCHECK" and "healthcheck.py" in i["value"] for i in structure)
    exposed = " ".join(i["value"] for i in structure if i["instruction"] == "EXPOSE")
    assert "8000" in exposed and "9100" in exposed


def test_the_context_keeps_out_what_the_image_does_not_need():
    ignore = (DEPLOY.parent / ".dockerignore").read_text().splitlines()
    for entry in (".git", "tests", "**/__pycache__", ".env"):
        assert entry in ignore
    for needed in ("!deploy/docker-entrypoint.sh", "!deploy/healthcheck.py"):
        assert needed in ignore
