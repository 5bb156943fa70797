"""Property-based fuzzing of the whole API against its own OpenAPI document (schemathesis).

Every operation is called with generated requests, authenticated as an admin, in-process over
WSGI. No response may be a 5xx, and every response must match what the document declares
(status codes, headers, content types, bodies), and invalid requests must be refused.
Bounded: :data:`MAX_EXAMPLES` per operation.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings

from tests.unit.conftest import Secured
from tests.unit.conftest import build_secured_app

MAX_EXAMPLES = 20
"""Generated requests per operation (keeps the whole run well under a minute)."""


EXCLUDED_CHECKS = [schemathesis.checks.positive_data_acceptance]
"""Schema-valid is not always acceptable: ``type`` must name a registered handler and ``payload``
must pass that handler's schema, which a static document cannot express (422 is the answer)."""


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    app = build_secured_app(tmp_path_factory.mktemp("fuzz") / "f.db", max_payload_bytes=64 * 1024)
    app.config["TASKMILL_EVENTS_MAX_AGE"] = 0.2  # the events stream ends, so a WSGI call returns
    secured = Secured(app)
    yield secured
    secured.runtime.close()


def _operations(s: Secured) -> list[Any]:
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", s.app)
    return [result.ok() for result in schema.get_all_operations()]


def test_the_document_lists_every_operation(fuzzed):
    labels = {op.label for op in _operations(fuzzed)}
    assert "POST /api/v1/tasks" in labels and "GET /api/v1/audit" in labels
    assert len(labels) >= 18


def test_fuzz_every_operation(fuzzed):
    headers = fuzzed.headers("admin")
    failures: list[str] = []
    for operation in _operations(fuzzed):

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            case.call_and_validate(headers=headers, excluded_checks=EXCLUDED_CHECKS)

        try:
            check()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
