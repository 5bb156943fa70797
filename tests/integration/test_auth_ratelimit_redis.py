"""The per-key rate limit holds across api processes when Redis is configured."""

from __future__ import annotations

import time
import types
import uuid

import pytest

from taskmill.api.ratelimit import build_rate_limiter
from taskmill.errors import RateLimited
from taskmill.models import Principal
from taskmill.models import Role

pytestmark = pytest.mark.integration


def test_two_limiters_on_one_redis_share_the_budget(redis_url):
    settings = types.SimpleNamespace(rate_limit="4/second", broker_url=redis_url)
    first, second = build_rate_limiter(settings), build_rate_limiter(settings)
    assert first.storage_uri == redis_url
    principal = Principal(subject="key:x", tenant="acme", role=Role.VIEWER, key_id=uuid.uuid4().hex)
    for limiter in (first, second, first, second):
        limiter.check(principal)
    with pytest.raises(RateLimited) as caught:
        second.check(principal)
    assert caught.value.retry_after >= 1
    deadline = time.monotonic() + 3
    while True:
        try:
            first.check(principal)
            break
        except RateLimited:
            assert time.monotonic() < deadline, "the window never emptied"
            time.sleep(0.2)


def test_an_unreachable_redis_lets_requests_through():
    settings = types.SimpleNamespace(rate_limit="1/second", broker_url="redis://127.0.0.1:1/0")
    limiter = build_rate_limiter(settings)
    principal = Principal(subject="key:y", tenant="acme", role=Role.VIEWER, key_id="y")
    started = time.monotonic()
    for _ in range(3):
        limiter.check(principal)
    assert time.monotonic() - started < 2
