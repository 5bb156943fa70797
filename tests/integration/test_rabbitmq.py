"""The RabbitMQ transport against the real RabbitMQ: topology, publisher, consumer, faults.

Each test module works in a vhost of its own (``rabbitmqctl add_vhost``), deleted afterwards;
tests that close connections get a vhost of their own so they disturb nobody else.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from taskmill_rabbitmq import topology
from taskmill_rabbitmq.broker import task_message
from taskmill_rabbitmq.consumer import RabbitConsumer
from taskmill_rabbitmq.publisher import Message
from taskmill_rabbitmq.publisher import Publisher
from taskmill_rabbitmq.publisher import Unroutable

from taskmill.errors import BrokerUnavailable
from taskmill.models import Task
from tests.services import amqp_url
from tests.services import rabbitmq_vhost

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vhost_url() -> Iterator[str]:
    with rabbitmq_vhost(amqp_url()) as url:
        yield url


@pytest.fixture
def own_vhost_url() -> Iterator[str]:
    with rabbitmq_vhost(amqp_url()) as url:
        yield url


def factory(url: str, heartbeat: int = 30):
    return lambda name: topology.connection_parameters(url, heartbeat=heartbeat, name=name)


def publisher(url: str, **kw) -> Publisher:
    return Publisher(factory(url), redacted_url=topology.redact(url), scrub=lambda s: s, **kw)


def consumer(url: str, queues: list[str], heartbeat: int = 30, **kw) -> RabbitConsumer:
    c = RabbitConsumer(factory(url, heartbeat), queues, **kw)
    assert c.wait_connected(10), "the consumer did not connect"
    return c


def tasks_of(queue: str, priorities: list[int]) -> list[Task]:
    return [Task(id=uuid.uuid4(), type="t.echo", queue=queue, priority=p) for p in priorities]


def receive_all(c: RabbitConsumer, n: int, timeout: float = 10.0, ack: bool = True) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        batch = c.receive(n - len(got), 0.5)
        if ack and batch:
            c.ack(batch)
        got += batch
    return got


def raw_channel(url: str):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    return conn, conn.channel()


def queue_depth(url: str, name: str) -> int:
    conn, ch = raw_channel(url)
    try:
        return ch.queue_declare(name, passive=True).method.message_count
    finally:
        conn.close()


def vhost_of(url: str) -> str:
    return pika.URLParameters(url).virtual_host


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


# -- topology and messages ----------------------------------------------------------------------------


def test_priorities_higher_first_and_fifo_within_one(vhost_url: str) -> None:
    q = f"prio-{uuid.uuid4().hex[:6]}"
    pub = publisher(vhost_url)
    tasks = tasks_of(q, [1, 5, 9, 5, 1, 9, 0, 5])
    try:
        pub.publish([task_message(t) for t in tasks])
        c = consumer(vhost_url, [q], prefetch=20)
        try:
            got = receive_all(c, len(tasks))
        finally:
            c.close()
    finally:
        pub.close()
    expected = sorted(tasks, key=lambda t: -t.priority)  # sorted() is stable: FIFO within one
    assert [d.task_id for d in got] == [t.id for t in expected]
    assert {d.queue for d in got} == {q}


def test_queues_are_durable_classic_with_priorities_and_a_dead_letter_exchange(vhost_url: str) -> None:
    q = f"shape-{uuid.uuid4().hex[:6]}"
    pub = publisher(vhost_url)
    try:
        pub.publish([task_message(tasks_of(q, [5])[0])])
    finally:
        pub.close()
    out = rabbitmqctl("list_queues", "-p", vhost_of(vhost_url), "name", "durable", "type", "arguments")
    line = next(x for x in out.splitlines() if x.startswith(topology.amqp_queue(q) + "\t"))
    assert "\ttrue\t" in line and "classic" in line
    assert "x-max-priority" in line and "9" in line
    assert topology.DEAD_LETTER_EXCHANGE in line
    assert topology.DEAD_LETTER_QUEUE in out


def test_messages_are_persistent_json_carrying_only_the_id(vhost_url: str) -> None:
    q = f"msg-{uuid.uuid4().hex[:6]}"
    task = tasks_of(q, [7])[0]
    task.payload = {"secret": "not in the message"}
    pub = publisher(vhost_url)
    try:
        pub.publish([task_message(task)])
    finally:
        pub.close()
    conn, ch = raw_channel(vhost_url)
    try:
        method, props, body = ch.basic_get(topology.amqp_queue(q), auto_ack=True)
    finally:
        conn.close()
    assert method is not None
    assert props.delivery_mode == 2 and props.content_type == "application/json"
    assert props.priority == 7 and props.message_id == str(task.id)
    assert json.loads(body) == {"id": str(task.id), "queue": q, "priority": 7}


def test_an_unroutable_message_is_an_error(vhost_url: str) -> None:
    pub = publisher(vhost_url)
    try:
        msg = Message(
            routing_key="taskmill.no-such-queue",
            body=b"{}",
            properties=pika.BasicProperties(content_type="application/json", message_id="m1"),
        )
        with pytest.raises(Unroutable):
            pub.publish([msg])
        assert isinstance(Unroutable("x"), BrokerUnavailable)  # the lifecycle keeps the task queued
    finally:
        pub.close()


def test_the_publisher_sends_json_only(vhost_url: str) -> None:
    pub = publisher(vhost_url)
    try:
        msg = Message(routing_key="taskmill.x", body=b"\x80\x04", properties=pika.BasicProperties())
        with pytest.raises(ValueError, match="JSON"):
            pub.publish([msg])
    finally:
        pub.close()


def test_a_deleted_queue_is_declared_again_on_publish(vhost_url: str) -> None:
    q = f"gone-{uuid.uuid4().hex[:6]}"
    pub = publisher(vhost_url)
    try:
        pub.publish([task_message(tasks_of(q, [5])[0])])
        conn, ch = raw_channel(vhost_url)
        ch.queue_delete(topology.amqp_queue(q))
        conn.close()
        pub.publish([task_message(tasks_of(q, [5])[0])])  # returned once, declared, retried
    finally:
        pub.close()
    assert queue_depth(vhost_url, topology.amqp_queue(q)) == 1


def test_batches_are_confirmed_not_one_wait_per_message(vhost_url: str) -> None:
    """A batch of 500 takes far less than 500 one-message publishes (each waits a round trip)."""
    q = f"batch-{uuid.uuid4().hex[:6]}"
    pub = publisher(vhost_url)
    try:
        pub.publish([task_message(tasks_of(q, [5])[0])])  # connect and declare first
        singles = tasks_of(q, [5] * 100)
        t0 = time.perf_counter()
        for t in singles:
            pub.publish([task_message(t)])
        per_single = (time.perf_counter() - t0) / 100
        batch = tasks_of(q, [5] * 500)
        t0 = time.perf_counter()
        pub.publish([task_message(t) for t in batch])
        per_batched = (time.perf_counter() - t0) / 500
    finally:
        pub.close()
    assert queue_depth(vhost_url, topology.amqp_queue(q)) == 601
    assert per_batched < per_single, (per_batched, per_single)


def test_malformed_messages_are_rejected_to_the_dead_letters(vhost_url: str) -> None:
    q = f"bad-{uuid.uuid4().hex[:6]}"
    c = consumer(vhost_url, [q], prefetch=5)
    before = queue_depth(vhost_url, topology.DEAD_LETTER_QUEUE)
    conn, ch = raw_channel(vhost_url)
    try:
        ch.basic_publish("", topology.amqp_queue(q), b"\x80\x04pickle?", pika.BasicProperties())
        ch.basic_publish(
            "", topology.amqp_queue(q), b"not json", pika.BasicProperties(content_type="application/json")
        )
        good = tasks_of(q, [5])[0]
        ch.basic_publish(
            "",
            topology.amqp_queue(q),
            topology.encode_task(good.id, q, 5),
            topology.task_properties(good.id, 5),
        )
        got = receive_all(c, 1)
        assert [d.task_id for d in got] == [good.id]
        deadline = time.monotonic() + 5
        while queue_depth(vhost_url, topology.DEAD_LETTER_QUEUE) < before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert queue_depth(vhost_url, topology.DEAD_LETTER_QUEUE) == before + 2
    finally:
        conn.close()
        c.close()


# -- consumer behaviour ---------------------------------------------------------------------------------


def test_fileno_is_readable_when_deliveries_wait(vhost_url: str) -> None:
    import select

    q = f"fd-{uuid.uuid4().hex[:6]}"
    c = consumer(vhost_url, [q], prefetch=5)
    pub = publisher(vhost_url)
    try:
        fd = c.fileno()
        assert fd is not None
        assert select.select([fd], [], [], 0)[0] == []
        pub.publish([task_message(tasks_of(q, [5])[0])])
        assert select.select([fd], [], [], 5)[0] == [fd]
        got = c.receive(10, 0)
        assert len(got) == 1
        c.ack(got)
        assert select.select([fd], [], [], 0)[0] == []
    finally:
        pub.close()
        c.close()


def test_requeued_deliveries_go_to_another_consumer(vhost_url: str) -> None:
    q = f"rq-{uuid.uuid4().hex[:6]}"
    pub = publisher(vhost_url)
    c1 = consumer(vhost_url, [q], prefetch=10, hold=60)
    try:
        pub.publish([task_message(t) for t in tasks_of(q, [5, 5])])
        got = receive_all(c1, 2, ack=False)
        assert len(got) == 2
        c1.close()  # closing hands unacked deliveries back
        c2 = consumer(vhost_url, [q], prefetch=10)
        try:
            again = receive_all(c2, 2)
        finally:
            c2.close()
        assert {d.task_id for d in again} == {d.task_id for d in got}
    finally:
        pub.close()


def test_a_busy_worker_hands_back_what_it_did_not_ask_for(vhost_url: str) -> None:
    q = f"hold-{uuid.uuid4().hex[:6]}"
    pub = publisher(vhost_url)
    busy = consumer(vhost_url, [q], prefetch=4, hold=0.5)
    try:
        pub.publish([task_message(t) for t in tasks_of(q, [5] * 4)])
        first = receive_all(busy, 1)
        assert len(first) == 1
        time.sleep(1.5)  # the busy worker does not ask for more
        assert busy.handed_back >= 1
        idle = consumer(vhost_url, [q], prefetch=10)
        try:
            rest = receive_all(idle, 3)
        finally:
            idle.close()
        assert len(rest) == 3
        assert not {d.task_id for d in rest} & {d.task_id for d in first}
        # asking again resumes consuming
        pub.publish([task_message(tasks_of(q, [5])[0])])
        assert len(receive_all(busy, 1)) == 1
    finally:
        pub.close()
        busy.close()


@pytest.mark.slow
def test_a_delivery_held_past_many_heartbeats_keeps_its_connection(vhost_url: str) -> None:
    """Heartbeat 2 s, delivery unacked for 10 s (a long task whose ack comes late): the
    connection stays, nothing is delivered twice, and the ack then settles the message."""
    q = f"hb-{uuid.uuid4().hex[:6]}"
    pub = publisher(vhost_url)
    c = consumer(vhost_url, [q], heartbeat=2, prefetch=2, hold=60)
    try:
        pub.publish([task_message(tasks_of(q, [5])[0])])
        got = receive_all(c, 1, ack=False)
        assert len(got) == 1
        time.sleep(10)
        assert c.connected and c.connects == 1
        assert c.receive(5, 0.2) == []  # not redelivered
        c.ack(got)
        time.sleep(0.3)
    finally:
        c.close()
        pub.close()
    assert queue_depth(vhost_url, topology.amqp_queue(q)) == 0


# -- faults -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_down_broker_fails_fast_with_broker_unavailable() -> None:
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    pub = publisher(url)
    try:
        t0 = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            pub.publish([task_message(tasks_of("x", [5])[0])])
        with pytest.raises(BrokerUnavailable):
            pub.publish([task_message(tasks_of("x", [5])[0])])
        assert time.monotonic() - t0 < 2.0
    finally:
        pub.close()
    c = RabbitConsumer(factory(url), ["x"], prefetch=1)
    try:
        with pytest.raises(BrokerUnavailable):
            c.receive(1, 0.2)
    finally:
        c.close()


def test_publisher_and_consumer_reconnect_after_rabbitmq_drops_them(own_vhost_url: str) -> None:
    q = "reconnect"
    pub = publisher(own_vhost_url)
    c = consumer(own_vhost_url, [q], prefetch=10)
    try:
        pub.publish([task_message(tasks_of(q, [5])[0])])
        assert len(receive_all(c, 1)) == 1
        rabbitmqctl("close_all_connections", "-p", vhost_of(own_vhost_url), "test: reconnect")
        deadline = time.monotonic() + 20
        published = None
        while published is None and time.monotonic() < deadline:
            try:
                t = tasks_of(q, [5])[0]
                pub.publish([task_message(t)])
                published = t
            except BrokerUnavailable:
                time.sleep(0.2)
        assert published is not None, "the publisher did not reconnect"
        got: list = []
        while not got and time.monotonic() < deadline:
            try:
                got = receive_all(c, 1, timeout=1)
            except BrokerUnavailable:
                time.sleep(0.2)
        assert [d.task_id for d in got] == [published.id]
        assert c.connects >= 2 and pub.reconnects >= 1
    finally:
        c.close()
        pub.close()


def test_an_ack_of_an_older_connection_is_ignored(own_vhost_url: str) -> None:
    q = "stale-ack"
    pub = publisher(own_vhost_url)
    c = consumer(own_vhost_url, [q], prefetch=10, hold=60)
    try:
        pub.publish([task_message(t) for t in tasks_of(q, [5, 5])])
        old = receive_all(c, 2, ack=False)
        rabbitmqctl("close_all_connections", "-p", vhost_of(own_vhost_url), "test: stale ack")
        deadline = time.monotonic() + 20
        again: list = []
        while len(again) < 2 and time.monotonic() < deadline:
            try:
                again += c.receive(2 - len(again), 0.5)
            except BrokerUnavailable:
                time.sleep(0.2)
        assert {d.task_id for d in again} == {d.task_id for d in old}  # redelivered after the drop
        c.ack(old)  # tags of the dead channel: must not ack (or break) the new deliveries
        time.sleep(0.3)
        assert c.connected
        c.ack(again)
        time.sleep(0.3)
    finally:
        c.close()
        pub.close()
    assert queue_depth(own_vhost_url, topology.amqp_queue(q)) == 0


# -- security ---------------------------------------------------------------------------------------------


def test_credentials_are_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    base = amqp_url()
    secret = f"pw-{uuid.uuid4().hex}"
    user = f"taskmill_t_{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_user", user, secret)
    parts = pika.URLParameters(base)
    host, port = parts.host, parts.port
    try:
        with rabbitmq_vhost(f"amqp://{user}:{secret}@{host}:{port}/") as url:
            caplog.set_level(logging.DEBUG)
            errors: list[str] = []
            pub = Publisher(
                factory(url), redacted_url=topology.redact(url), scrub=lambda s: topology.scrub(s, url)
            )
            q = "creds"
            pub.publish([task_message(tasks_of(q, [5])[0])])
            c = consumer(url, [q], prefetch=2)
            receive_all(c, 1)
            c.close()
            pub.close()
            wrong = url.replace(secret, secret + "-wrong")
            for bad in (wrong, f"amqp://{user}:{secret}@127.0.0.1:{free_port()}/"):
                p = Publisher(
                    factory(bad),
                    redacted_url=topology.redact(bad),
                    scrub=lambda s, b=bad: topology.scrub(s, b),
                )
                try:
                    p.publish([task_message(tasks_of(q, [5])[0])])
                except BrokerUnavailable as exc:
                    errors.append(str(exc))
                finally:
                    p.close()
            assert len(errors) == 2
            text = caplog.text + "\n".join(errors) + "\n".join(r.getMessage() for r in caplog.records)
            assert secret not in text
            assert topology.redact(url) == url.replace(secret, "***")
    finally:
        rabbitmqctl("delete_user", user)


def test_amqps_verifies_the_server_certificate_by_default(tmp_path: Path) -> None:
    """A TLS server with a self-signed certificate: refused without its CA, accepted (the TLS
    handshake completes) with ``ca_file`` naming it."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    handshakes: list[str] = []

    def serve() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                with server_ctx.wrap_socket(raw, server_side=True) as tls:
                    handshakes.append("ok")
                    tls.recv(8)  # then hang up: it is not an AMQP server
            except (ssl.SSLError, OSError):
                handshakes.append("refused")

    threading.Thread(target=serve, daemon=True).start()
    url = f"amqps://guest:guest@localhost:{port}/"
    try:
        params = topology.connection_parameters(url, heartbeat=5, name="t")
        ctx = params.ssl_options.context
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        with pytest.raises((pika.exceptions.AMQPError, ssl.SSLError)):
            pika.BlockingConnection(params)
        trusted = topology.connection_parameters(url, heartbeat=5, name="t", ca_file=str(cert))
        with pytest.raises((pika.exceptions.AMQPError, OSError)) as info:
            pika.BlockingConnection(trusted)
        assert not isinstance(info.value, ssl.SSLCertVerificationError)  # TLS passed; AMQP did not
    finally:
        listener.close()
    assert handshakes[:2] == ["refused", "ok"]


def test_plugin_settings_are_declared_and_checked(tmp_path: Path) -> None:
    from taskmill.config import load_settings
    from taskmill.errors import ConfigError
    from taskmill.runtime import build_runtime

    env = {
        "TASKMILL_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "TASKMILL_BROKER_URL": "amqps://u:p@rabbit.example:5671/v",
        "TASKMILL_RABBITMQ_HEARTBEAT": "7",
    }
    rt = build_runtime(load_settings(environ=env))
    try:
        assert rt.broker.options.heartbeat == 7 and rt.broker.options.verify is True
        assert rt.broker.parameters("t").heartbeat == 7
        assert "p@" not in rt.broker.redacted_url
    finally:
        rt.close()
    for key, value in (("HEARTBEAT", "often"), ("CA_FILE", str(tmp_path / "missing.pem"))):
        with pytest.raises(ConfigError) as info:
            build_runtime(load_settings(environ={**env, f"TASKMILL_RABBITMQ_{key}": value}))
        assert f"TASKMILL_RABBITMQ_{key}" in str(info.value)


def test_republish_skips_paused_queues_and_backs_off_per_task(vhost_url: str, tmp_path: Path) -> None:
    from taskmill.config import load_settings
    from taskmill.runtime import build_runtime

    env = {"TASKMILL_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "TASKMILL_BROKER_URL": vhost_url}
    rt = build_runtime(load_settings(environ=env), upgrade=True)
    q, paused = f"rp-{uuid.uuid4().hex[:6]}", f"rpp-{uuid.uuid4().hex[:6]}"
    try:
        rt.storage.queues.set_paused(paused, True)
        lc = rt.lifecycle
        live = [
            t for t, _ in lc.submit([lc.build({"type": "echo", "queue": q}, "default") for _ in range(3)])
        ]
        held = [
            t
            for t, _ in lc.submit([lc.build({"type": "echo", "queue": paused}, "default") for _ in range(2)])
        ]
        assert queue_depth(vhost_url, topology.amqp_queue(q)) == 3  # published at submit
        assert rt.broker.republish_lost(live + held) == 3  # the paused queue's wait for resume
        assert rt.broker.republish_lost(live + held) == 0  # each task backs off
        assert queue_depth(vhost_url, topology.amqp_queue(q)) == 6  # duplicates: harmless
        rt.storage.queues.set_paused(paused, False)
        depth = queue_depth(vhost_url, topology.amqp_queue(paused))
        assert rt.broker.queue_resumed(paused) == 2
        assert queue_depth(vhost_url, topology.amqp_queue(paused)) == depth + 2
    finally:
        rt.close()
