"""The trainer's background sender: an unreachable tracking server never blocks or fails training,
the gap is reported, and every value arrives, in order, once the server is back."""

from __future__ import annotations

import threading
import time

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from airtune.tracking_callback import Sender


class FlakyClient:
    """Refuses every call while `down` is set, like a tracking server that is away."""

    def __init__(self):
        self.down = threading.Event()
        self.metrics: list[Metric] = []
        self.tags: dict[str, str] = {}
        self.calls = 0

    def log_batch(self, run_id, metrics=(), tags=()):
        self.calls += 1
        if self.down.is_set():
            raise ConnectionError("Connection refused")
        self.metrics += list(metrics)
        self.tags.update({t.key: t.value for t in tags})


def metric(step: int) -> Metric:
    return Metric("loss", float(step), 1000 + step, step)


def test_values_sent_while_the_server_is_away_arrive_in_order_when_it_is_back():
    client, said = FlakyClient(), []
    sender = Sender("run", lambda: client, max_backoff=0.2, say=said.append)
    sender.metrics([metric(0)])
    client.down.set()
    started = time.monotonic()
    for step in range(1, 2001):  # the training loop goes on: appending never waits on the server
        sender.metrics([metric(step)])
        sender.tags({"airtune.progress": f"step {step}"})
    assert time.monotonic() - started < 1.0
    time.sleep(0.5)
    assert sender.pending > 0 and client.calls > 1  # it kept retrying
    client.down.clear()
    assert sender.close(timeout=10) == 0
    assert [m.step for m in client.metrics] == list(range(2001))  # all of them, once each, in order
    assert client.tags["airtune.progress"] == "step 2000"  # tags coalesce: the newest value wins
    assert any("MLflow unreachable (Connection refused)" in s for s in said)
    assert any("MLflow reachable again" in s for s in said)
    assert sender.outages == 1


def test_close_gives_up_after_its_timeout_and_says_what_is_left():
    client, said = FlakyClient(), []
    client.down.set()
    sender = Sender("run", lambda: client, max_backoff=0.1, say=said.append)
    sender.metrics([metric(s) for s in range(5)])
    started = time.monotonic()
    assert sender.close(timeout=1.0) == 5
    assert time.monotonic() - started < 3
    assert "5 values could not be sent" in said[-1] and "metrics.jsonl" in said[-1]


def test_a_call_waits_for_the_metrics_before_it_and_a_refused_call_is_skipped():
    client, said, seen = FlakyClient(), [], []
    sender = Sender("run", lambda: client, max_backoff=0.1, say=said.append)
    sender.metrics([metric(1), metric(2)])
    sender.call(lambda c: seen.append(len(c.metrics)), "a checkpoint")

    def refused(c):  # MLflow refuses the request itself: retrying would not help
        raise MlflowException("bad name", error_code=INVALID_PARAMETER_VALUE)

    sender.call(refused, "a refused call")
    sender.metrics([metric(3)])
    assert sender.close(timeout=5) == 0
    assert seen == [2]
    assert [m.step for m in client.metrics] == [1, 2, 3]
    assert any("a refused call failed and is skipped" in s for s in said)
