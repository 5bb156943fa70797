"""The fault script, shortened: 300 tasks, 3 SIGKILLed workers, nothing lost (scripts/fault.py)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.services import postgres_url
from tests.services import unavailable

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def load_fault() -> ModuleType:
    """scripts/ is no package: load the script as the module ``fault`` (as its workers do)."""
    spec = importlib.util.spec_from_file_location("fault", ROOT / "scripts" / "fault.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("broker", ["sql", "redis"])
def test_nothing_is_lost_when_workers_are_sigkilled(broker: str) -> None:
    if broker == "redis" and shutil.which("redis-server") is None:
        unavailable("redis-server", "PATH", FileNotFoundError("redis-server"))
    fault = load_fault()
    config = fault.FaultConfig(
        broker=broker,
        tasks=300,
        kills=3,
        workers=2,
        concurrency=2,
        database_url=postgres_url(),
        deadline=60,
        lease=3,
        quiet=True,
    )
    report = fault.run_fault(config)
    summary = "\n".join(report.lines())
    assert report.submitted == 300, summary
    assert len(report.kills) == 3, summary
    assert report.lost == 0, summary
    assert report.completed == 300, summary
