"""setup.py ships every package of the tree (a non-editable install must not lack one)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_package_directory_is_declared_in_setup_py() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    declared = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PACKAGES" for t in node.targets)
    )
    found = {}
    for base in ("core", "plugins", "handlers", "web"):
        for init in (ROOT / base).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / base)
            found[".".join(rel.parts)] = str(init.parent.relative_to(ROOT))
    assert found == declared
