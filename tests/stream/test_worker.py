"""The worker's supervision of its loop, without a broker: a failed loop is built anew with a
backoff, counted, and does not count as progress; a call that does not return is left behind
and the loop rebuilt, and too many of them still blocked end the process."""

from __future__ import annotations

import threading
import time

import pytest

from app.observability.health import STUCK_AFTER_S
from app.observability.metrics import Metrics
from app.stream import worker
from app.stream.runtime.calls import Rebuild, StuckCalls
from app.stream.worker import EXIT_STUCK, MAX_STUCK_CALLS, Supervisor


class Loop:
    """Stands in for a Runtime: fails with ``failure``, or runs until stopped."""

    def __init__(self, heartbeat: float | None, failure: Rebuild | None) -> None:
        self.heartbeat = time.monotonic() if heartbeat is None else heartbeat
        self.failure = failure
        self.became_ready = False

    def run(self, stop: threading.Event) -> None:
        if self.failure is not None:
            raise self.failure
        stop.set()

    def is_ready(self) -> bool:
        return False

    def assigned_partitions(self) -> list[int]:
        return []


def test_a_failed_loop_is_rebuilt_counted_and_carries_its_heartbeat(monkeypatch):
    monkeypatch.setattr(worker, "BACKOFF_S", (0.01,))
    failures = [Rebuild("timed_out", "broker down"), Rebuild("fatal", "fenced"), None]
    built: list[Loop] = []

    def build(heartbeat: float | None) -> Loop:
        built.append(Loop(heartbeat, failures[len(built)]))
        return built[-1]

    metrics = Metrics()
    supervisor = Supervisor(build, metrics, StuckCalls())  # type: ignore[arg-type]
    assert supervisor.run(threading.Event()) == 0
    assert len(built) == 3
    # Rebuilding is not progress: each new loop starts from its predecessor's last beat.
    assert built[1].heartbeat == built[2].heartbeat == built[0].heartbeat
    for reason in ("timed_out", "fatal"):
        assert metrics.registry.get_sample_value(
            "recoloop_worker_restarts_total", {"reason": reason}) == 1.0
    assert not supervisor.is_live()  # it has stopped


def test_no_progress_for_a_while_is_unhealthy():
    supervisor = Supervisor(lambda heartbeat: Loop(heartbeat, None), Metrics(),  # type: ignore
                            StuckCalls())
    assert supervisor.is_live()
    supervisor.runtime.heartbeat = time.monotonic() - STUCK_AFTER_S - 1
    assert not supervisor.is_live()


def test_a_call_that_does_not_return_is_left_behind_until_it_does():
    def refuse(timeout_s: float) -> None:
        raise ValueError(f"refused within {timeout_s} s")

    stuck = StuckCalls(wait_s=0.2)
    assert stuck.run("quick", lambda timeout_s: None, 5.0) is None
    with pytest.raises(ValueError, match="refused within 5.0 s"):  # raised in the loop
        stuck.run("failing", refuse, 5.0)
    released = threading.Event()
    started = time.monotonic()
    with pytest.raises(Rebuild) as rebuild:
        stuck.run("sending the batch's offsets", lambda timeout_s: released.wait(), 5.0)
    assert rebuild.value.reason == "stuck_call"
    assert time.monotonic() - started < 2.0  # waited for wait_s, not for the call
    assert stuck.blocked() == ["kafka call: sending the batch's offsets"]
    released.set()  # the broker answers again: the call returns in its own thread
    deadline = time.monotonic() + 5
    while stuck.blocked() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stuck.blocked() == []


def test_too_many_calls_left_behind_end_the_process(monkeypatch):
    monkeypatch.setattr(worker, "BACKOFF_S", (0.01,))
    stuck = StuckCalls(wait_s=0.01)
    never = threading.Event()
    built: list[Loop] = []

    class Blocking(Loop):
        def run(self, stop: threading.Event) -> None:  # each loop leaves a call behind
            stuck.run("committing the batch", lambda timeout_s: never.wait(), 5.0)

    def build(heartbeat: float | None) -> Loop:
        built.append(Blocking(heartbeat, None))
        return built[-1]

    metrics = Metrics()
    supervisor = Supervisor(build, metrics, stuck)  # type: ignore[arg-type]
    try:
        assert supervisor.run(threading.Event()) == EXIT_STUCK
        assert len(built) == MAX_STUCK_CALLS + 1
        assert metrics.registry.get_sample_value(
            "recoloop_worker_restarts_total", {"reason": "stuck_call"}) == MAX_STUCK_CALLS + 1
    finally:
        never.set()
