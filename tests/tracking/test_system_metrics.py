"""System metrics from MLflow's monitors, sampled by airtune's own loop (tracking_callback.SystemMonitor):
named system/<node>/..., logged at the current training step, through the Sender, until finish()."""

from __future__ import annotations

import time

from airtune import tracking_callback


class FakeSender:
    run_id = "0123456789abcdef"

    def __init__(self):
        self.sent = []

    def metrics(self, metrics):
        self.sent += metrics


def test_samples_go_through_the_sender_at_the_training_step(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRTUNE_NODE_NAME", "node7")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    sender, step = FakeSender(), [3]
    monitor = tracking_callback.SystemMonitor(sender, 0.05, lambda: step[0])
    monitor.start()
    deadline = time.monotonic() + 30
    while not sender.sent and time.monotonic() < deadline:
        time.sleep(0.05)
    step[0] = 4
    time.sleep(0.3)
    monitor.finish()
    assert monitor._thread is None
    names = {m.key for m in sender.sent}
    assert "system/node7/cpu_utilization_percentage" in names and "system/node7/system_memory_usage_megabytes" in names
    assert {m.step for m in sender.sent} <= {3, 4} and 3 in {m.step for m in sender.sent}
    count = len(sender.sent)
    time.sleep(0.2)
    assert len(sender.sent) == count  # finished: no more samples
    monitor.finish()  # twice is harmless
