"""One rank service on the real broker shared by the hostile-HTTP test modules (a service
starts in seconds; the tests each use their own sessions and keys), and a keep-alive
HTTP client that says when the server dropped its connection."""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from confluent_kafka import Consumer, Message, TopicPartition

from app.contract.topics import BASKET_ADDS, CLICKS, DETAIL_VIEWS, SERVED
from app.kafka import topic_admin
from app.serve.edge import timed_protocol
from app.serve.main import create_key
from app.settings import Settings
from tests.worker_process import WorkerProcess, free_port

# Short read limits, so a test of them takes about a second.
HEAD_TIMEOUT_S, BODY_TIMEOUT_S = 1.0, 1.0
ODD_SITE = "shop/eu 100%?#"  # an id the contract allows, with every character a URL reserves
INPUT_TOPICS = (SERVED, CLICKS, DETAIL_VIEWS, BASKET_ADDS)


@dataclass
class EdgeService:
    settings: Settings
    process: WorkerProcess
    key: str  # site "shop"
    odd_key: str  # site ODD_SITE
    admin: str

    @property
    def port(self) -> int:
        return self.process.serve_port

    def connection(self) -> Client:
        return Client(self.port)


class Client:
    """One HTTP/1.1 keep-alive connection that never reconnects by itself: a request after
    the server dropped it raises, so a test sees every dropped connection. It connects at
    its first request (the server closes a connection that sends no request for
    RECOLOOP_SERVE_HEAD_TIMEOUT_S)."""

    def __init__(self, port: int) -> None:
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.http.auto_open = 0
        self.used = False

    def request(self, method: str, path: str, key: str | None = None, body: Any = None,
                raw: bytes | None = None, content_type: str | None = "application/json"
                ) -> tuple[int, bytes, http.client.HTTPResponse]:
        if not self.used:
            self.http.connect()
            self.used = True
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        data = raw if raw is not None else None if body is None else orjson.dumps(body)
        self.http.request(method, path, body=data, headers=headers)
        answer = self.http.getresponse()
        return answer.status, answer.read(), answer

    @property
    def open(self) -> bool:
        return self.http.sock is not None

    def close(self) -> None:
        self.http.close()


def wait_for_key(port: int, key: str, site: str) -> None:
    """Until the service has read ``key`` from the keys topic."""
    from urllib.parse import quote

    client = Client(port)
    deadline = time.monotonic() + 30
    try:
        while client.request("GET", f"/v1/sites/{quote(site, safe='')}/sessions/x/ranking",
                             key)[0] == 401:
            assert time.monotonic() < deadline, "the service did not read the new key"
            time.sleep(0.1)
    finally:
        client.close()


@pytest.fixture(scope="package")
def edge(bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[EdgeService]:
    settings = Settings.of(bootstrap_servers=bootstrap_servers,
                        topic_prefix=f"t{uuid.uuid4().hex[:8]}-", partitions=4)
    assert topic_admin.apply(settings).ok
    where = tmp_path_factory.mktemp("edge")
    process = WorkerProcess(bootstrap_servers, settings.kafka.topic_prefix, where / "data",
                            where / "serve.log", "serve", serve_key_rate_per_s="100000",
                            serve_head_timeout_s=str(HEAD_TIMEOUT_S),
                            serve_body_timeout_s=str(BODY_TIMEOUT_S))
    process.start()
    try:
        process.wait_ready()
        keys = [create_key(settings, site) for site in ("shop", ODD_SITE, None)]
        for key, site in zip(keys, ("shop", ODD_SITE), strict=False):
            wait_for_key(process.serve_port, key, site)
        yield EdgeService(settings, process, *keys)
    finally:
        process.stop()


def read_to_end(settings: Settings, logical_topics: tuple[str, ...] = INPUT_TOPICS
                ) -> list[Message]:
    """Every record of the topics up to their end offsets now: what the service produced
    before its answers (it answers only once the broker acknowledged)."""
    consumer = Consumer({**settings.kafka_config(), "group.id": f"t-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        ends: dict[tuple[str, int], tuple[int, int]] = {}
        for logical in logical_topics:
            topic = settings.topic(logical)
            for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                           timeout=10)
                if high > low:
                    ends[(topic, partition)] = low, high
        consumer.assign([TopicPartition(t, p, low) for (t, p), (low, _) in ends.items()])
        messages: list[Message] = []
        unread = set(ends)
        deadline = time.monotonic() + 30
        while unread:
            assert time.monotonic() < deadline, f"not read to their end: {sorted(unread)}"
            for message in consumer.consume(500, timeout=0.5):
                if message.error() is None:
                    messages.append(message)
                    where = (message.topic() or "", message.partition() or 0)
                    if where in ends and (message.offset() or 0) + 1 >= ends[where][1]:
                        unread.discard(where)
        return messages
    finally:
        consumer.close()


def event_ids(messages: list[Message]) -> set[str]:
    return {orjson.loads(m.value() or b"{}").get("event_id") for m in messages}


def log_of(edge: EdgeService) -> str:
    return Path(edge.process.log_path).read_text(errors="replace")


@contextmanager
def served(app: Any) -> Iterator[int]:
    """``app`` on a real uvicorn with the service's protocol, in this process. Its limits
    are long: the tests that serve this way test routes, not read limits, and keep one
    connection per server while the other server answers (a ranking request may wait up to
    10 s for its event; uvicorn closes a connection idle for its keep-alive, 5 s by
    default, and the client here never reconnects)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           http=timed_protocol(30.0, 30.0),
                                           timeout_keep_alive=60,
                                           log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
