"""The batch schema's fast path gives exactly marshmallow's answer: the same loaded items for
plain submissions, and marshmallow itself (its errors) for anything else."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from marshmallow import Schema
from marshmallow import ValidationError

from taskmill.api.schemas import BatchSchema
from taskmill.api.schemas import _fast_item

EDGE_VALUES: dict[str, list[Any]] = {
    "type": ["echo", "", "x" * 200, "x" * 201, 3, None, True],
    "payload": [{}, {"a": [1, {"b": None}]}, {"1": 1}, [], "x", None],
    "queue": ["default", "a.b:c-d_e", "", "bad queue", "x" * 200, "x" * 201, 7, None],
    "priority": [0, 9, 10, -1, 5.0, True, "5", None],
    "max_retries": [0, 100, 101, -1, 2.5, False, None],
    "timeout": [1, 0, 2**31 - 1, 2**31, 30.0, "30", None],
    "retry_backoff": [0, 0.5, 2, -0.1, 10 * 366 * 86400, 10 * 366 * 86400 + 1, math.nan, math.inf, True, "1"],
    "idempotency_key": ["k", "", "k" * 201, 1, None],
    "tags": [[], ["a", "b"], [""], ["x" * 201], ["a"] * 100, ["a"] * 101, "a", [1], None],
    "delay": [5, -1],
    "run_at": ["2030-01-01T00:00:00Z"],
    "depends_on": [[]],
    "callback_url": ["https://example.com/hook"],
    "status": ["queued"],
}


def _marshmallow(body: Any) -> Any:
    try:
        return ("ok", Schema.load(BatchSchema(), body))
    except ValidationError as exc:
        return ("error", exc.messages)


def _ours(body: Any) -> Any:
    try:
        return ("ok", BatchSchema().load(body))
    except ValidationError as exc:
        return ("error", exc.messages)


@pytest.mark.parametrize("field", sorted(EDGE_VALUES))
def test_each_edge_value_loads_as_marshmallow_loads_it(field: str) -> None:
    for value in EDGE_VALUES[field]:
        body = {"tasks": [{"type": "echo", field: value}] if field != "type" else [{field: value}]}
        assert _ours(body) == _marshmallow(body), (field, value)


def test_random_batches_load_as_marshmallow_loads_them() -> None:
    rng = random.Random(20261201)
    fields = sorted(EDGE_VALUES)
    fast = 0
    for _ in range(400):
        items = []
        for _ in range(rng.randint(1, 4)):
            item = {"type": "echo"}
            for field in rng.sample(fields, rng.randint(0, 4)):
                item[field] = rng.choice(EDGE_VALUES[field])
            items.append(item)
        body = {"tasks": items}
        fast += all(_fast_item(i) is not None for i in items)
        assert _ours(body) == _marshmallow(body), body
    assert fast > 20  # the fast path was taken often enough for this to mean something


@pytest.mark.parametrize(
    "body",
    [
        {"tasks": []},
        {"tasks": [{"type": "echo"}] * 1001},
        {"tasks": "x"},
        {"tasks": [{"type": "e"}], "x": 1},
        [],
    ],
)
def test_bodies_the_fast_path_leaves_alone(body: Any) -> None:
    assert _ours(body) == _marshmallow(body)
    assert _ours(body)[0] == "error"


def test_a_plain_batch_takes_the_fast_path() -> None:
    item = {
        "type": "echo",
        "payload": {"i": 1},
        "queue": "q",
        "priority": 3,
        "tags": ["a"],
        "retry_backoff": 2,
    }
    loaded = BatchSchema().load({"tasks": [item]})
    assert loaded == {"tasks": [{**item, "retry_backoff": 2.0}]}
    assert type(loaded["tasks"][0]["retry_backoff"]) is float
    assert loaded["tasks"][0]["payload"] is not item["payload"]  # a copy, as marshmallow's
