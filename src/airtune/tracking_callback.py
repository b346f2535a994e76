"""The trainer's MLflow callback: metrics at each logging step, from global rank 0 only.

Loaded by `airtune.train` when present; it needs only MLFLOW_TRACKING_URI and MLFLOW_RUN_ID.
A tracking server that is down never fails training: a failed send is kept and sent with the next.
"""

from __future__ import annotations

import os
import sys
import time


def make_callbacks() -> list:
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return []
    from transformers import TrainerCallback

    from airtune import tracking

    class MlflowMetricsCallback(TrainerCallback):
        def __init__(self) -> None:
            self.pending: list = []
            self.client = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            for k, v in logs.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    key = k.replace("train_", "") if k.startswith("train_") and k != "train_loss" else k
                    self.pending.append(Metric(key, float(v), ts, int(state.global_step)))
            self.flush()

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.flush()

        def flush(self) -> None:
            if not self.pending:
                return
            try:
                if self.client is None:
                    self.client = tracking.client()
                for i in range(0, len(self.pending), 500):
                    self.client.log_batch(run_id, metrics=self.pending[i : i + 500])
                self.pending = []
            except Exception as exc:  # never fail training because tracking is away
                print(f"[airtune] MLflow logging failed, {len(self.pending)} values kept for later: {exc}", file=sys.stderr)

    return [MlflowMetricsCallback()]
