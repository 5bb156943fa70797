"""The plugin template (examples/taskmill-checksum) as a third party uses it: installed with pip
next to this taskmill, found through its entry point, and its own tests passing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TEMPLATE = ROOT / "examples" / "taskmill-checksum"


def environment(tmp_path: Path, pythonpath: list[Path]) -> dict[str, str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("TASKMILL_") or k.startswith("TASKMILL_TEST_")
    }
    return {
        **clean,
        "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath),
        "TASKMILL_DATABASE_URL": f"sqlite:///{tmp_path}/template.db",
    }


def run(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=240)


def test_the_plugin_template_installs_registers_its_handler_and_passes_its_own_tests(tmp_path: Path) -> None:
    source = tmp_path / "src"
    target = tmp_path / "site"
    shutil.copytree(  # builds stay out of the repository
        TEMPLATE, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".pytest_cache")
    )
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    installed = run([*pip, "--target", str(target), str(source)], os.environ.copy(), tmp_path)
    assert installed.returncode == 0, installed.stderr
    env = environment(tmp_path, [target, ROOT])

    where = run(
        [sys.executable, "-c", "import taskmill_checksum; print(taskmill_checksum.__file__)"], env, tmp_path
    )
    assert where.returncode == 0 and where.stdout.strip().startswith(str(target)), where

    listed = run([sys.executable, "-m", "taskmill.cli", "plugins", "--json"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    handlers = json.loads(listed.stdout)["handlers"]
    assert handlers["files.checksum"]["distribution"].startswith("taskmill-checksum"), handlers[
        "files.checksum"
    ]

    # the template's own tests, run from the copy (its src/ is not on the path: the installed
    # package is the one tested)
    tests = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], env, source)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout and "failed" not in tests.stdout

    # an unknown TASKMILL_CHECKSUM_* name is refused at start, because the plugin declares its prefix
    bad = run(
        [sys.executable, "-m", "taskmill.cli", "plugins", "--json"],
        {**env, "TASKMILL_CHECKSUM_MAX_BYTES": "0"},
        tmp_path,
    )
    assert bad.returncode != 0 and "TASKMILL_CHECKSUM_MAX_BYTES" in bad.stderr, bad
