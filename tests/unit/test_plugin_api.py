"""Plugins depend on core's published plugin API only (DESIGN.md, "The seams").

Every module of a built-in plugin (plugins/, handlers/, web/) may import from ``taskmill``,
``taskmill.plugin_api``, ``taskmill.testing`` and ``taskmill.client``, and from its own package;
never from another core module, and never from another plugin.
"""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

import taskmill.plugin_api as plugin_api

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLUGIN_DIRS = [ROOT / "plugins", ROOT / "handlers", ROOT / "web"]
ALLOWED_CORE = {"taskmill", "taskmill.plugin_api", "taskmill.testing", "taskmill.client"}


def _plugin_modules() -> list[pathlib.Path]:
    files = []
    for base in PLUGIN_DIRS:
        if base.is_dir():
            files.extend(p for p in base.rglob("*.py") if "migrations" not in p.parts or p.name == "env.py")
    return sorted(files)


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_built_in_plugins_import_only_the_published_plugin_api() -> None:
    problems = []
    for path in _plugin_modules():
        package = path.relative_to(ROOT).parts[1]  # e.g. taskmill_redis
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top == "taskmill" and module not in ALLOWED_CORE:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
            elif top.startswith("taskmill_") and top != package:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports another plugin: {module}")
    assert not problems, "plugins reach past taskmill.plugin_api:\n" + "\n".join(problems)


def test_the_check_sees_plugins_at_all() -> None:
    names = {p.relative_to(ROOT).parts[1] for p in _plugin_modules()}
    assert {"taskmill_sql", "taskmill_redis", "taskmill_auth", "taskmill_handlers"} <= names


@pytest.mark.parametrize("name", sorted(plugin_api.__all__))
def test_every_published_name_resolves(name: str) -> None:
    value = getattr(plugin_api, name)
    assert value is not None
    module = importlib.import_module(plugin_api._WHERE[name])  # noqa: SLF001 - our own table
    assert getattr(module, plugin_api._ALIASES.get(name, name)) is value  # noqa: SLF001
