"""The files.checksum handler against taskmill.testing: a real lifecycle on SQLite, the stub
broker and core's worker loop (a forked pool), as in production minus the servers.

Run with ``python -m pytest`` from this folder (taskmill and this package installed).
"""

from __future__ import annotations

import ast
import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from taskmill import HandlerContext
from taskmill import Retry
from taskmill import TaskStatus
from taskmill import create_app
from taskmill.plugin_api import ConfigError
from taskmill.plugin_api import set_current_runtime
from taskmill.testing import make_runtime
from taskmill.testing import run_worker_until_idle

import taskmill_checksum
from taskmill_checksum import checksum


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The directory the handler may read (TASKMILL_CHECKSUM_ROOT)."""
    folder = tmp_path / "files"
    folder.mkdir()
    return folder


def runtime_for(tmp_path: Path, root: Path, **plugin_settings: str) -> Any:
    """A migrated runtime with this plugin registered and its settings given, as a worker has."""
    extra = {"checksum_root": str(root), "checksum_retry_delay": "0", **plugin_settings}
    rt = make_runtime(tmp_path, plugins=[taskmill_checksum], auth="none", extra=tuple(sorted(extra.items())))
    set_current_runtime(rt)  # what `taskmill worker` does: handlers find their settings through it
    return rt


@pytest.fixture
def rt(tmp_path: Path, root: Path) -> Iterator[Any]:
    runtime = runtime_for(tmp_path, root)
    yield runtime
    runtime.close()


def submit(rt: Any, payload: dict[str, Any], **fields: Any) -> Any:
    body = {"type": "files.checksum", "payload": payload, **fields}  # fields may name another type
    [(task, _)] = rt.lifecycle.submit([rt.lifecycle.build(body, "default")])
    return task


def test_a_submitted_task_is_run_by_the_worker_and_its_digest_stored(rt: Any, root: Path) -> None:
    data = b"taskmill " * 300_000  # 2.7 MB: three chunks
    (root / "in").mkdir()
    (root / "in" / "a.bin").write_bytes(data)
    task = submit(rt, {"path": "in/a.bin"})
    run_worker_until_idle(rt)
    done = rt.storage.tasks.get(task.id)
    assert done.status is TaskStatus.COMPLETED, done.error
    assert done.result == {
        "path": "in/a.bin",
        "algorithm": "sha256",
        "digest": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "matches": None,
    }


def test_an_expected_digest_is_checked(rt: Any, root: Path) -> None:
    (root / "b.txt").write_bytes(b"hello")
    good = submit(rt, {"path": "b.txt", "algorithm": "md5", "expected": hashlib.md5(b"hello").hexdigest()})
    bad = submit(rt, {"path": "b.txt", "algorithm": "md5", "expected": "0" * 32})
    run_worker_until_idle(rt)
    assert rt.storage.tasks.get(good.id).result["matches"] is True
    failed = rt.storage.tasks.get(bad.id)
    assert failed.status is TaskStatus.FAILED and failed.attempts == 1, "a mismatch is not retried"
    assert failed.error["type"] == "ChecksumRefused" and "not 000" in failed.error["message"]


def test_a_missing_file_is_retried_until_it_arrives(tmp_path: Path, root: Path) -> None:
    rt = runtime_for(tmp_path, root, checksum_retry_delay="0.3")
    try:
        task = submit(rt, {"path": "late.csv"}, max_retries=3)
        run_worker_until_idle(rt)
        waiting = rt.storage.tasks.get(task.id)
        assert waiting.status is TaskStatus.SCHEDULED and waiting.attempts == 1
        assert waiting.error["type"] == "Retry" and "does not exist" in waiting.error["message"]
        (root / "late.csv").write_text("a,b\n1,2\n")
        time.sleep(0.4)  # the retry delay
        run_worker_until_idle(rt)
        done = rt.storage.tasks.get(task.id)
        assert done.status is TaskStatus.COMPLETED and done.attempts == 2
        assert done.result["digest"] == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    finally:
        rt.close()


def test_a_file_that_never_arrives_fails_once_the_retries_are_spent(rt: Any) -> None:
    task = submit(rt, {"path": "never.bin"}, max_retries=2)
    run_worker_until_idle(rt)
    failed = rt.storage.tasks.get(task.id)
    assert failed.status is TaskStatus.FAILED and failed.attempts == 3
    assert "does not exist" in failed.error["message"]


def test_nothing_outside_the_root_is_read(rt: Any, root: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret")
    (root / "link").symlink_to(tmp_path / "secret")
    (root / "dir").mkdir()
    linked = submit(rt, {"path": "link"})
    folder = submit(rt, {"path": "dir"})
    run_worker_until_idle(rt)
    for task, why in ((linked, "outside"), (folder, "not a regular file")):
        failed = rt.storage.tasks.get(task.id)
        assert failed.status is TaskStatus.FAILED and failed.attempts == 1
        assert why in failed.error["message"]


def test_a_file_over_the_size_setting_is_refused(tmp_path: Path, root: Path) -> None:
    rt = runtime_for(tmp_path, root, checksum_max_bytes="4")
    try:
        (root / "big").write_bytes(b"12345")
        task = submit(rt, {"path": "big"})
        run_worker_until_idle(rt)
        failed = rt.storage.tasks.get(task.id)
        assert failed.status is TaskStatus.FAILED and "TASKMILL_CHECKSUM_MAX_BYTES" in failed.error["message"]
    finally:
        rt.close()


def test_a_bad_setting_stops_the_start_with_its_name(tmp_path: Path, root: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        runtime_for(tmp_path, root, checksum_max_bytes="0")
    assert "TASKMILL_CHECKSUM_MAX_BYTES" in str(caught.value)


def test_progress_is_reported_per_chunk_and_a_cancel_stops_the_read(rt: Any, root: Path) -> None:
    (root / "c.bin").write_bytes(b"x" * (5 << 19))  # 2.5 chunks
    seen: list[float] = []
    ctx = HandlerContext(uuid.uuid4(), 1, type_="files.checksum", report_progress=seen.append)
    result = checksum(ctx, checksum.load_payload({"path": "c.bin"}))
    assert result is not None and result["bytes"] == 5 << 19
    assert seen == [0.4, 0.8, 1.0]
    asked: list[bool] = []

    def cancel_after_first_chunk() -> bool:
        asked.append(True)
        return len(asked) > 1

    ctx = HandlerContext(uuid.uuid4(), 1, report_progress=seen.append, check_cancel=cancel_after_first_chunk)
    seen.clear()
    assert checksum(ctx, checksum.load_payload({"path": "c.bin"})) is None
    assert seen == [0.4], "it stopped reading at the second chunk"


def test_a_file_that_changes_while_read_is_a_transient_error(rt: Any, root: Path) -> None:
    target = root / "growing.log"
    target.write_bytes(b"x" * (3 << 20))

    def grow() -> bool:  # called after each chunk: the file grows once the first one is read
        if target.stat().st_size == 3 << 20:
            with target.open("ab") as f:
                f.write(b"more")
        return False

    ctx = HandlerContext(uuid.uuid4(), 1, check_cancel=grow)
    with pytest.raises(Retry, match="changed while it was read"):
        checksum(ctx, checksum.load_payload({"path": "growing.log"}))


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "path"),
        ({"path": "../etc/passwd"}, "path"),
        ({"path": "/etc/passwd"}, "path"),
        ({"path": "a", "algorithm": "crc32"}, "algorithm"),
        ({"path": "a", "expected": "ABC"}, "expected"),
        ({"path": "a", "algorithm": "sha1", "expected": "ab" * 16}, "expected"),
    ],
)
def test_a_bad_payload_is_refused_by_the_api_with_422(rt: Any, payload: dict[str, Any], field: str) -> None:
    client = create_app(runtime=rt).test_client()
    answer = client.post("/api/v1/tasks", json={"type": "files.checksum", "payload": payload})
    assert answer.status_code == 422, answer.get_json()
    assert field in answer.get_json()["errors"]["payload"]
    assert rt.storage.tasks.count_pending("default") == 0, "nothing was created"


def test_the_api_lists_the_handler_with_its_payload_schema(rt: Any) -> None:
    client = create_app(runtime=rt).test_client()
    handlers = {h["name"]: h for h in client.get("/api/v1/handlers").get_json()}
    schema = handlers["files.checksum"]["payload_schema"]
    assert schema["required"] == ["path"] and "sha256" in schema["properties"]["algorithm"]["enum"]
    accepted = client.post("/api/v1/tasks", json={"type": "files.checksum", "payload": {"path": "x"}})
    assert accepted.status_code == 201 and accepted.get_json()["status"] == "queued"


PUBLISHED = {"taskmill", "taskmill.plugin_api", "taskmill.testing", "taskmill.client"}
"""What a plugin may import of taskmill: the rest of it may change shape between releases."""


def test_the_plugin_imports_only_taskmill_s_published_api() -> None:
    package = Path(taskmill_checksum.__file__).parent
    reached = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            reached += [
                f"{path.name}: {n}" for n in names if n.split(".")[0] == "taskmill" and n not in PUBLISHED
            ]
    assert reached == []


def test_the_async_handler_runs_on_the_asyncio_pool(rt: Any, root: Path) -> None:
    files = {f"f{i}.bin": bytes([i]) * (300_000 * (i + 1)) for i in range(4)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    tasks = {
        name: submit(rt, {"path": name, "algorithm": "blake2b"}, type="files.checksum_async")
        for name in files
    }
    missing = submit(rt, {"path": "nope"}, type="files.checksum_async", max_retries=0)
    run_worker_until_idle(rt, pool="asyncio", concurrency=4)
    for name, task in tasks.items():
        done = rt.storage.tasks.get(task.id)
        assert done.status is TaskStatus.COMPLETED, done.error
        assert done.result["digest"] == hashlib.blake2b(files[name]).hexdigest()
    assert rt.storage.tasks.get(missing.id).status is TaskStatus.FAILED
