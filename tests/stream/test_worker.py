"""The worker's supervision of its loop, without a broker: a failed loop is built anew with a
backoff, counted, and does not count as progress; a hung Kafka call ends the process."""

from __future__ import annotations

import os
import threading
import time

import pytest

from app.observability.health import STUCK_AFTER_S
from app.observability.metrics import Metrics
from app.stream import worker
from app.stream.loop import Rebuild
from app.stream.worker import EXIT_STUCK, STUCK_CALL_S, Supervisor


class Loop:
    """Stands in for a Runtime: fails with ``failure``, or runs until stopped."""

    def __init__(self, heartbeat: float | None, failure: Rebuild | None) -> None:
        self.heartbeat = time.monotonic() if heartbeat is None else heartbeat
        self.failure = failure
        self.became_ready = False
        self.calling: tuple[str, float] | None = None

    def run(self, stop: threading.Event) -> None:
        if self.failure is not None:
            raise self.failure
        stop.set()

    def is_ready(self) -> bool:
        return False

    def assigned_partitions(self) -> list[int]:
        return []

    def stuck_call(self) -> tuple[str, float] | None:
        return self.calling


def test_a_failed_loop_is_rebuilt_counted_and_carries_its_heartbeat(monkeypatch):
    monkeypatch.setattr(worker, "BACKOFF_S", (0.01,))
    failures = [Rebuild("timed_out", "broker down"), Rebuild("fatal", "fenced"), None]
    built: list[Loop] = []

    def build(heartbeat: float | None) -> Loop:
        built.append(Loop(heartbeat, failures[len(built)]))
        return built[-1]

    metrics = Metrics()
    supervisor = Supervisor(build, metrics)  # type: ignore[arg-type]
    supervisor.run(threading.Event())
    assert len(built) == 3
    # Rebuilding is not progress: each new loop starts from its predecessor's last beat.
    assert built[1].heartbeat == built[2].heartbeat == built[0].heartbeat
    for reason in ("timed_out", "fatal"):
        assert metrics.registry.get_sample_value(
            "recoloop_worker_restarts_total", {"reason": reason}) == 1.0
    assert not supervisor.is_live()  # it has stopped


def test_no_progress_for_a_while_is_unhealthy():
    supervisor = Supervisor(lambda heartbeat: Loop(heartbeat, None), Metrics())  # type: ignore
    assert supervisor.is_live()
    supervisor.runtime.heartbeat = time.monotonic() - STUCK_AFTER_S - 1
    assert not supervisor.is_live()


def test_a_kafka_call_that_never_returns_ends_the_process(monkeypatch):
    exits: list[int] = []

    def exit_(status: int) -> None:
        exits.append(status)
        raise SystemExit(status)

    monkeypatch.setattr(os, "_exit", exit_)
    supervisor = Supervisor(lambda heartbeat: Loop(heartbeat, None), Metrics())  # type: ignore
    supervisor.runtime.calling = ("committing the batch", STUCK_CALL_S + 1)
    with pytest.raises(SystemExit):
        supervisor._watch(threading.Event())
    assert exits == [EXIT_STUCK]
