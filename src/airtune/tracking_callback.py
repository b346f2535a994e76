"""The trainer's MLflow side: live metrics, checkpoints and system metrics, sent in the background.

`airtune.train` calls `make_callbacks()` and adds what it returns to its Trainer. It needs only
MLFLOW_TRACKING_URI and MLFLOW_RUN_ID (docs/architecture.md); without MLFLOW_RUN_ID it returns [].

- Training metrics (loss, learning_rate, grad_norm, epoch, tokens_per_second, eval_loss, ...) at each
  logging step, from global rank 0 only.
- Each saved checkpoint becomes an MLflow 3 logged model `checkpoint-<step>` with its step and the
  eval metrics of that step (files are uploaded by the register task: docs/mlflow.md).
- System metrics (CPU, memory, disk, network, and every GPU where there is one) through MLflow's own
  system-metrics monitors, from local rank 0 of each node, named `system/node<N>/...`.

Nothing here ever blocks or fails training: the training loop only appends to a queue, and one
background thread (`Sender`) sends it. When the tracking server is down or slow, the thread keeps
everything, retries with back-off, reports the gap on stderr (the task log) and sends it all, in
order, once the server answers again. What is still unsent when training ends is waited for a
while (AIRTUNE_MLFLOW_DRAIN_SECONDS, default 120); after that the register task records it from
metrics.jsonl, which the trainer writes anyway.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
MAX_TAGS_PER_BATCH = 100
REPORT_EVERY_S = 30.0  # while the server stays away, remind the log this often


def _say(message: str) -> None:
    print(f"[airtune] {message}", file=sys.stderr, flush=True)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Sender:
    """One background thread sending metrics, tags and calls to MLflow, in order, surviving outages.

    `metrics()`, `tags()` and `call()` only append to a queue and return at once. The thread sends
    consecutive metrics and tags in one `log_batch` (tags coalesced: the newest value of a key wins),
    and runs each `call(fn)` as `fn(client)` once everything queued before it has been sent. A failed
    send is retried, the same items again, with back-off from 1 s up to `max_backoff` s; a resend of
    metrics that did arrive is harmless (MLflow's stores drop exact duplicates).
    """

    def __init__(self, run_id: str, client_factory: Callable | None = None, *, max_backoff: float = 30.0, say=_say):
        self.run_id = run_id
        self._client_factory = client_factory
        self._client = None
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._wake = threading.Event()
        self._max_backoff = max_backoff
        self._say = say
        self.sent = 0
        self.down_since: float | None = None
        self.outages = 0
        self._thread = threading.Thread(target=self._run, name="airtune-mlflow-sender", daemon=True)
        self._thread.start()

    # --- the training side: append and return -------------------------------------------------
    def metrics(self, metrics: list) -> None:
        if metrics:
            self._put([("metric", m) for m in metrics])

    def tags(self, tags: dict[str, str]) -> None:
        if tags:
            self._put([("tag", (str(k), str(v))) for k, v in tags.items()])

    def call(self, fn: Callable, what: str) -> None:
        """Run fn(client) in the background, after everything queued before it."""
        self._put([("call", (fn, what))])

    def _put(self, items: list) -> None:
        with self._cond:
            if self._closing:
                return
            self._items.extend(items)
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._items)

    def close(self, timeout: float) -> int:
        """Stop taking new items, send what is queued for up to `timeout` s; return what is left."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._wake.set()
        self._thread.join(timeout)
        left = self.pending
        if left:
            self._say(
                f"MLflow: {left} values could not be sent within {timeout:.0f} s (server away since "
                f"{time.strftime('%H:%M:%S', time.localtime(self.down_since or time.time()))}); they are in "
                "metrics.jsonl and the register task records them"
            )
        return left

    # --- the background thread ----------------------------------------------------------------
    def _client_or_make(self):
        if self._client is None:
            if self._client_factory is not None:
                self._client = self._client_factory()
            else:
                from airtune import tracking

                self._client = tracking.client()
        return self._client

    def _next_batch(self) -> list:
        """The head of the queue: one call, or a run of metrics and tags within log_batch's limits."""
        head = self._items[0]
        if head[0] == "call":
            return [head]
        batch, n_metrics, tag_keys = [], 0, set()
        for item in self._items:
            kind = item[0]
            if kind == "call":
                break
            if kind == "metric":
                if n_metrics >= MAX_METRICS_PER_BATCH:
                    break
                n_metrics += 1
            elif kind == "tag":
                if item[1][0] not in tag_keys and len(tag_keys) >= MAX_TAGS_PER_BATCH:
                    break
                tag_keys.add(item[1][0])
            batch.append(item)
        return batch

    def _send(self, batch: list) -> None:
        client = self._client_or_make()
        if batch[0][0] == "call":
            fn, _what = batch[0][1]
            fn(client)
            return
        from mlflow.entities import RunTag

        metrics = [item[1] for item in batch if item[0] == "metric"]
        tags = {}
        for item in batch:
            if item[0] == "tag":
                tags[item[1][0]] = item[1][1]  # the newest value of a key wins
        client.log_batch(self.run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])

    def _run(self) -> None:
        backoff = min(1.0, self._max_backoff)
        last_report = 0.0
        while True:
            with self._cond:
                while not self._items and not self._closing:
                    self._cond.wait()
                if not self._items:
                    return  # closing and everything sent
                batch = self._next_batch()
            try:
                self._send(batch)
            except Exception as exc:  # never let tracking stop training
                if not _is_transient(exc):  # MLflow refuses the request itself: resending would not help
                    what = batch[0][1][1] if batch[0][0] == "call" else f"a batch of {len(batch)} values"
                    self._say(f"MLflow: {what} failed and is skipped: {_short(exc)}")
                else:
                    now = time.time()
                    if self.down_since is None:
                        self.down_since = now
                        self.outages += 1
                        last_report = now
                        self._say(
                            f"MLflow unreachable ({_short(exc)}); training goes on, {self.pending} values "
                            "wait here and are sent when it answers again"
                        )
                    elif now - last_report >= REPORT_EVERY_S:
                        last_report = now
                        self._say(f"MLflow still unreachable after {now - self.down_since:.0f} s; {self.pending} values wait")
                    # New values do not cut the back-off short (that would hammer a struggling server);
                    # close() does: the end of training wants the server as soon as it is back.
                    if self._closing:
                        time.sleep(min(backoff, 1.0))
                    else:
                        self._wake.wait(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
                    continue
            with self._cond:
                for _ in batch:
                    self._items.popleft()
                self.sent += len(batch)
                waiting = len(self._items)
            backoff = min(1.0, self._max_backoff)
            if self.down_since is not None:
                self._say(
                    f"MLflow reachable again after {time.time() - self.down_since:.0f} s; sending the "
                    f"{waiting + len(batch)} values kept meanwhile"
                )
                self.down_since = None


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _is_transient(exc: Exception) -> bool:
    """Server away, slow or overloaded (retry) as opposed to a request MLflow refuses (skip)."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        code = str(getattr(exc, "error_code", ""))
        if code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST"):
            return False
    return True


def node_rank() -> int:
    """This machine's index among the job's nodes (torchrun's GROUP_RANK, a Kubernetes Job's index)."""
    for var in ("GROUP_RANK", "NODE_RANK", "JOB_COMPLETION_INDEX"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def node_name() -> str:
    """The name system metrics carry: stable across retries (a retried pod gets a new hostname)."""
    return os.environ.get("AIRTUNE_NODE_NAME") or f"node{node_rank()}"


class SystemMonitor:
    """System metrics from MLflow's own monitors (CPU, memory, disk, network, NVIDIA/AMD GPUs:
    `compat.SystemMetrics`), sampled in a thread of ours, whose samples go through our Sender instead
    of straight to the server.

    MLflow's own loop stops for good the first time the server does not answer; this one keeps
    sampling and lets the Sender keep the values until the server is back. Samples are logged at the
    current training step (MLflow counts its own), so they line up with the loss and a retry goes on
    where the checkpoint left off.
    """

    def __init__(self, sender: Sender, interval: float, current_step: Callable[[], int]) -> None:
        from airtune import compat

        self.sender = sender
        self.current_step = current_step
        self.metrics = compat.SystemMetrics(sender.run_id, sampling_interval=interval, samples_before_logging=1,
                                            node_id=node_name(), tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="airtune-system-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        m = self.metrics
        while not self._stop.is_set():
            for _ in range(m.samples_before_logging):
                m.collect()
                if self._stop.wait(m.sampling_interval):
                    break
            try:
                self.publish(m.aggregate())
            except Exception as exc:  # a broken sensor must not end the monitor
                _say(f"system metrics: a sample failed: {exc}")

    def publish(self, metrics: dict) -> None:
        from mlflow.entities import Metric

        prefix = self.metrics.prefix
        ts = int(time.time() * 1000)
        step = self.current_step()
        self.sender.metrics([Metric(prefix + k, float(v), ts, step) for k, v in metrics.items() if _is_number(v)])
        self.metrics.clear()

    def finish(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None


def _system_monitor(sender: Sender, interval: float, current_step: Callable[[], int]) -> SystemMonitor:
    return SystemMonitor(sender, interval, current_step)


def make_callbacks() -> list:
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return []
    # Our Sender retries itself; MLflow's own HTTP retries (7, with back-off: minutes) would only
    # delay noticing an outage. Values already set in the environment win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    from transformers import TrainerCallback

    from airtune import tracking

    drain_s = float(os.environ.get("AIRTUNE_MLFLOW_DRAIN_SECONDS", "120"))
    system_interval = float(os.environ.get("AIRTUNE_SYSTEM_METRICS_INTERVAL", "10"))

    class MlflowCallback(TrainerCallback):
        """Training metrics and checkpoints from global rank 0; system metrics from local rank 0."""

        def __init__(self) -> None:
            self.sender: Sender | None = None
            self.monitor = None
            self.step = 0
            self.logged: dict[int, dict[str, tuple[float, int]]] = {}  # step -> key -> (value, ts), recent steps
            self._tokens: tuple[float, float] | None = None  # (num_tokens, time) at the last log
            self._attempt: tuple[float, int] | None = None  # (time, step) when this attempt began

        def _sender(self) -> Sender:
            if self.sender is None:
                self.sender = Sender(run_id)
                atexit.register(self._at_exit)
            return self.sender

        def _at_exit(self) -> None:
            """Send what is left before the process ends (also when the trainer died with an error)."""
            if self.monitor is not None:
                self.monitor.finish()
            if self.sender is None:
                return
            waiting = self.sender.pending
            if waiting and self.sender.down_since is not None:
                _say(f"waiting up to {drain_s:.0f} s for MLflow to take the last {waiting} values")
            self.sender.close(timeout=drain_s)

        def on_train_begin(self, args, state, control, **kwargs):
            self.step = int(state.global_step)
            self._attempt = (time.time(), self.step)
            if state.is_local_process_zero and system_interval > 0:
                try:
                    self.monitor = _system_monitor(self._sender(), system_interval, lambda: self.step)
                    self.monitor.start()
                    self._sender().tags({f"airtune.node.{node_name()}": socket.gethostname()})
                except Exception as exc:
                    _say(f"system metrics are off: {exc}")
                    self.monitor = None
            if state.is_world_process_zero:
                self._sender().tags(self._progress(state))

        def _progress(self, state) -> dict[str, str]:
            step, total = int(state.global_step), int(state.max_steps or 0)
            eta = None
            if self._attempt is not None and step > self._attempt[1] and total:
                per_step = (time.time() - self._attempt[0]) / (step - self._attempt[1])
                eta = round(per_step * max(total - step, 0), 1)
            progress = {
                "step": step, "max_steps": total, "epoch": round(float(state.epoch or 0.0), 4),
                "percent": round(100.0 * step / total, 1) if total else None,
                "eta_seconds": eta, "updated": round(time.time(), 1),
            }
            return {tracking.TAG_PROGRESS: json.dumps(progress)}

        def on_step_end(self, args, state, control, **kwargs):
            self.step = int(state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            from mlflow.entities import Metric

            now = time.time()
            ts, step = int(now * 1000), int(state.global_step)
            values = {k: float(v) for k, v in logs.items() if _is_number(v)}
            tokens = logs.get("num_tokens", logs.get("num_input_tokens_seen"))
            if _is_number(tokens) and "loss" in logs:
                if self._tokens is not None and now > self._tokens[1]:
                    values["tokens_per_second"] = round((tokens - self._tokens[0]) / (now - self._tokens[1]), 2)
                self._tokens = (float(tokens), now)
            at_step = self.logged.setdefault(step, {})
            at_step.update({k: (v, ts) for k, v in values.items()})
            for old in sorted(self.logged)[:-8]:
                del self.logged[old]
            sender = self._sender()
            sender.metrics([Metric(k, v, ts, step) for k, v in values.items()])
            sender.tags(self._progress(state))

        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            step = int(state.global_step)
            # relative to the job folder (output/'s parent), as result.json names it: the same folder is
            # mounted at different paths in a pod and on the Airflow worker
            path = os.path.join(os.path.basename(os.path.normpath(args.output_dir)), f"checkpoint-{step}")
            # The eval metrics of this step (the Trainer evaluates before it saves) and its loss, with the
            # timestamps they were sent with: the run keeps one point each, the logged model is linked to it.
            logged = self.logged.get(step, {})
            metrics = {k: v for k, v in logged.items() if k.startswith("eval_") or k == "loss"}

            def record(client, step=step, path=path, metrics=metrics):
                tracking.record_checkpoint(client, run_id, step, path, metrics)

            self._sender().call(record, f"recording checkpoint-{step}")

        def on_train_end(self, args, state, control, **kwargs):
            # The sender stays open: the trainer may still evaluate the final weights after this.
            # It is drained when the process exits (atexit), for up to AIRTUNE_MLFLOW_DRAIN_SECONDS.
            if self.monitor is not None:
                self.monitor.finish()
                self.monitor = None
            if self.sender is not None and state.is_world_process_zero:
                self.sender.tags(self._progress(state))

    return [MlflowCallback()]
