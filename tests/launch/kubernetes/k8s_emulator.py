"""A small Kubernetes API emulator for the tests. It is NOT a cluster.

It serves the part of the Kubernetes REST API that the cncf.kubernetes provider, the `kubernetes`
client and `kubernetes_asyncio` use (pods, their logs and events, Services, Secrets, persistent
volume claims, batch/v1 Jobs; list, watch, get, create, patch, delete), keeps the objects in memory,
and plays kubelet and Job controller on this machine:

- every object it receives is checked against the Kubernetes 1.37 schema (kubernetes-validate),
  then against rules of the API server and controllers that a schema cannot express (`RULES`):
  names (DNS-1123 / DNS-1035), label syntax, extended resources (requests = limits), a Job's
  `podFailurePolicy` needs `restartPolicy: Never`, an indexed Job's name plus `-<index>` must stay
  a 63-character host name, volume mounts name declared volumes, ...;
- a pod is "scheduled" when its node selector matches the emulated node's labels, the GPUs it asks
  for fit the node's (`node_gpus`, none by default) and its volume claims exist; otherwise it stays
  Pending with a FailedScheduling event, as on a cluster;
- its container runs as a local process group: the image is looked up in `images` (a PATH and
  environment per image; an unknown image is ErrImagePull), the environment is built from `env`,
  `envFrom`, `secretKeyRef` (a missing Secret is CreateContainerConfigError) and `fieldRef`, and
  `$(VAR)` references in command and args are expanded as Kubernetes does;
- the pod moves Pending -> Running -> Succeeded / Failed with the exit code in its container status;
  `activeDeadlineSeconds` is enforced; its output is the pod log (timestamps, follow, sinceSeconds);
- deleting a pod sends SIGTERM to its process group, SIGKILL after the grace period, then the pod is
  gone; deleting a Job follows `propagationPolicy` (the API's default for Jobs is Orphan);
- the Job controller makes indexed pods (`<job>-<i>-xxxxx`, host name `<job>-<i>`, the completion
  index as annotation, label and JOB_COMPLETION_INDEX), applies `podFailurePolicy` and
  `backoffLimit`, marks the Job Complete or Failed and removes a failed Job's running pods.

What it does not exercise: real scheduling, images, containers, cgroups, resource limits, GPUs,
volumes (a claim's `mountPath` must already be a folder here: tests mount the workspace at the path
the workers use), security contexts beyond runAsNonRoot, networking and cluster DNS. A headless
Service's `<host>.<service>` names are resolved by rewriting them to 127.0.0.1 in the container's
command, args and environment when a pod with that host name and subdomain matches the Service's
selector; so a missing or mis-selecting Service still fails the rendezvous, but real DNS through the
Service (and two pods on different machines) is not exercised. Admission webhooks, RBAC, quotas,
Kueue, TTL controllers and garbage collection beyond Job -> pods are not emulated either.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
KINDS = {  # resource -> (apiVersion, kind)
    "pods": ("v1", "Pod"), "services": ("v1", "Service"), "secrets": ("v1", "Secret"),
    "persistentvolumeclaims": ("v1", "PersistentVolumeClaim"), "events": ("v1", "Event"),
    "configmaps": ("v1", "ConfigMap"), "jobs": ("batch/v1", "Job"),
}
RULES = """\
names: pods, Jobs, Secrets, claims: DNS-1123 subdomains (253); Services: DNS-1035 labels (63)
labels: keys [prefix/]name (63), values 63 characters, alphanumeric at both ends
pods: container names unique DNS labels; env names valid; volume mounts name declared volumes,
      mount paths unique; extended resources (nvidia.com/gpu) integers with requests = limits;
      requests <= limits; hostname and subdomain DNS labels; restartPolicy Always|OnFailure|Never
jobs: template restartPolicy Never or OnFailure; podFailurePolicy needs Never; its exit-code rules
      name a container of the template and never list 0 under In; Indexed needs completions;
      Indexed: name + "-" + (completions - 1) fits a 63-character host name
services: clusterIP None or unset; port numbers 1-65535, port names unique"""


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_nano() -> str:
    t = time.time_ns()
    return datetime.fromtimestamp(t // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{t % 1_000_000_000:09d}Z"


def parse_label_selector(selector: str | None):
    """`a=b,c!=d,e,!f,g in (x,y),h notin (z)` -> predicate over a labels dict."""
    if not selector:
        return lambda labels: True
    parts = re.findall(r"[^,(]+(?:\([^)]*\))?", selector)
    tests = []
    for raw in parts:
        p = raw.strip()
        if not p:
            continue
        if m := re.match(r"^(\S+)\s+(in|notin)\s+\(([^)]*)\)$", p):
            key, op, vals = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            tests.append(lambda lb, k=key, o=op, v=vals: (lb.get(k) in v) if o == "in" else (lb.get(k) not in v))
        elif "!=" in p:
            k, v = p.split("!=", 1)
            tests.append(lambda lb, k=k.strip(), v=v.strip(): lb.get(k) != v)
        elif "=" in p:
            k, v = re.split(r"==?", p, maxsplit=1)
            tests.append(lambda lb, k=k.strip(), v=v.strip(): lb.get(k) == v)
        elif p.startswith("!"):
            tests.append(lambda lb, k=p[1:].strip(): k not in lb)
        else:
            tests.append(lambda lb, k=p: k in lb)
    return lambda labels: all(t(labels or {}) for t in tests)


def parse_field_selector(selector: str | None):
    if not selector:
        return lambda obj: True
    tests = []
    for p in selector.split(","):
        neg = "!=" in p
        k, v = re.split(r"!=|==?", p, maxsplit=1)

        def get(obj, path=k.strip()):
            for part in path.split("."):
                obj = (obj or {}).get(part)
            return "" if obj is None else str(obj)

        tests.append(lambda o, g=get, v=v.strip(), neg=neg: (g(o) != v) if neg else (g(o) == v))
    return lambda obj: all(t(obj) for t in tests)


def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command/args: defined variables are replaced, $$ is a $."""
    return re.sub(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


class Emulator:
    """Start with `.start()`, stop with `.stop()` (kills every process it started)."""

    def __init__(self, root: Path, *, images: dict[str, dict] | None = None, node_gpus: int = 0,
                 node_labels: dict[str, str] | None = None, schema_version: str = "1.37.0"):
        self.root = Path(root)
        self.images = images or {}
        self.node_gpus = node_gpus
        self.node_labels = {"kubernetes.io/hostname": "emulator", "kubernetes.io/os": "linux", **(node_labels or {})}
        self.schema_version = schema_version
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.lock = threading.RLock()
        self.rv = 0
        self.changes: list[tuple[int, str, str, str, dict]] = []  # (rv, type, resource, ns, object)
        self.requests: list[tuple[str, str]] = []  # (method, path) of every API call
        self.procs: dict[tuple[str, str], dict] = {}  # (ns, pod) -> {"proc", "log", "deadline", ...}
        self.logs: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
        self.deleted: list[tuple[str, str, str]] = []  # (resource, ns, name) removed from the store
        self._started_jobs: set[str] = set()  # uids of Jobs whose pods were made
        self._counted_failures: set[str] = set()  # uids of failed pods the Job controller has seen
        self._stop = threading.Event()
        self.port = None

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> Emulator:
        self.root.mkdir(parents=True, exist_ok=True)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True, name="k8s-emulator-api")
        self._thread.start()
        if not ready.wait(20):
            raise RuntimeError("the emulator's API did not start")
        self._kubelet = threading.Thread(target=self._kubelet_loop, daemon=True, name="k8s-emulator-kubelet")
        self._kubelet.start()
        self.kubeconfig = self.root / "kubeconfig"
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": "emulator"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator"}}],
        }))
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connection_uri_env(self, conn_id: str) -> dict[str, str]:
        """AIRFLOW_CONN_<ID> pointing the provider's hooks at this emulator."""
        conn = {"conn_type": "kubernetes", "extra": {"kube_config_path": str(self.kubeconfig)}}
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)}

    def stop(self) -> None:
        self._stop.set()
        with self.lock:
            for info in self.procs.values():
                self._signal(info, signal.SIGKILL)
        for info in list(self.procs.values()):
            try:
                info["proc"].wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if getattr(self, "_loop", None):
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._kubelet.join(timeout=10)

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.SockSite(runner, self._sock)
        loop.run_until_complete(site.start())
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    # --- store -------------------------------------------------------------------------------
    def _record(self, type_: str, resource: str, ns: str, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.changes.append((self.rv, type_, resource, ns, copy.deepcopy(obj)))

    def get(self, resource: str, ns: str, name: str) -> dict | None:
        with self.lock:
            obj = self.objects.get((resource, ns, name))
            return copy.deepcopy(obj) if obj else None

    def list(self, resource: str, ns: str | None = None, selector: str | None = None) -> list[dict]:
        match = parse_label_selector(selector)
        with self.lock:
            return [copy.deepcopy(o) for (r, n, _), o in sorted(self.objects.items())
                    if r == resource and (ns is None or n == ns) and match(o["metadata"].get("labels"))]

    def create(self, obj: dict, ns: str | None = None) -> dict:
        """Create as an API client would (validated); for Secrets and claims the tests need."""
        resource = {v[1]: k for k, v in KINDS.items()}[obj["kind"]]
        ns = ns or obj["metadata"].get("namespace") or "default"
        with self.lock:
            return self._create(resource, ns, copy.deepcopy(obj))

    def wait(self, predicate, timeout: float = 30, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"emulator: timed out after {timeout}s waiting for {what}")

    def log_text(self, ns: str, pod: str) -> str:
        with self.lock:
            return b"".join(line for _, line in self.logs.get((ns, pod), [])).decode(errors="replace")

    def api_verbs(self) -> set[tuple[str, str, str]]:
        """(API group, resource[/subresource], RBAC verb) of every call made to the HTTP API so far:
        what a Role must allow for the same calls on a cluster."""
        out = set()
        with self.lock:
            calls = list(self.requests)
        for method, path, watch in calls:
            m = re.match(r"^/(api/v1|apis/batch/v1)(?:/namespaces/[^/]+)?/([a-z]+)(/[^/]+)?(/[a-z]+)?$", path)
            if not m:
                continue
            group = "" if m.group(1) == "api/v1" else "batch"
            named = m.group(3) is not None
            verb = {"GET": ("get" if named else "watch" if watch else "list"), "POST": "create", "PATCH": "patch",
                    "PUT": "update", "DELETE": "delete" if named else "deletecollection"}[method]
            out.add((group, m.group(2) + (m.group(4) or ""), verb))
        return out

    def running_processes(self) -> list[tuple[str, str]]:
        with self.lock:
            return [k for k, v in self.procs.items() if v["proc"].poll() is None]

    # --- HTTP --------------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        with self.lock:
            self.requests.append((request.method, path, _bool(request.query.get("watch"))))
        try:
            if path == "/version":
                return web.json_response({"major": "1", "minor": "37", "gitVersion": "v1.37.0-emulator", "platform": "linux/amd64"})
            m = re.match(r"^/(?:api/v1|apis/batch/v1)(?:/namespaces/([^/]+))?/([a-z]+)(?:/([^/]+))?(?:/([a-z]+))?$", path)
            if not m or m.group(2) not in KINDS:
                raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
            ns, resource, name, sub = m.groups()
            if (resource == "jobs") != path.startswith("/apis/batch/v1"):
                raise ApiError(404, "NotFound", f"{resource} are not served at {path}")
            q = request.query
            if sub == "log":
                return await self._log(request, ns, name)
            if sub not in (None, "status"):
                raise ApiError(404, "NotFound", f"subresource {sub} is not emulated")
            if request.method == "GET" and name is None:
                if _bool(q.get("watch")):
                    return await self._watch(request, resource, ns)
                return web.json_response(self._list(resource, ns, q.get("labelSelector"), q.get("fieldSelector")))
            body = await request.json() if request.can_read_body else None
            with self.lock:
                if request.method == "POST" and name is None:
                    return web.json_response(self._create(resource, ns or "default", body), status=201)
                if request.method == "GET":
                    return web.json_response(self._get(resource, ns, name))
                if request.method == "PATCH":
                    return web.json_response(self._patch(resource, ns, name, body))
                if request.method == "DELETE":
                    return web.json_response(self._delete(resource, ns, name, q, body or {}))
            raise ApiError(405, "MethodNotAllowed", f"{request.method} {path} is not emulated")
        except ApiError as e:
            return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "message": e.message, "reason": e.reason, "code": e.code}, status=e.code)

    def _list(self, resource: str, ns: str | None, labels: str | None, fields: str | None) -> dict:
        lmatch, fmatch = parse_label_selector(labels), parse_field_selector(fields)
        api, kind = KINDS[resource]
        with self.lock:
            items = [copy.deepcopy(o) for (r, n, _), o in sorted(self.objects.items())
                     if r == resource and (ns is None or n == ns) and lmatch(o["metadata"].get("labels")) and fmatch(o)]
            return {"apiVersion": api, "kind": f"{kind}List", "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    async def _watch(self, request: web.Request, resource: str, ns: str | None) -> web.StreamResponse:
        q = request.query
        lmatch, fmatch = parse_label_selector(q.get("labelSelector")), parse_field_selector(q.get("fieldSelector"))
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        deadline = time.monotonic() + min(float(q.get("timeoutSeconds") or 30), 60)
        with self.lock:
            since = int(q["resourceVersion"]) if q.get("resourceVersion") else None
            if since is None:
                events = [("ADDED", copy.deepcopy(o)) for (r, n, _), o in sorted(self.objects.items())
                          if r == resource and (ns is None or n == ns)]
                since = self.rv
            else:
                events = []
        while True:
            for type_, obj in events:
                if lmatch(obj["metadata"].get("labels")) and fmatch(obj):
                    await resp.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")
            if time.monotonic() > deadline or self._stop.is_set():
                break
            await asyncio.sleep(0.1)
            with self.lock:
                events = [(t, o) for rv, t, r, n, o in self.changes if rv > since and r == resource and (ns is None or n == ns)]
                since = self.rv
        await resp.write_eof()
        return resp

    async def _log(self, request: web.Request, ns: str, name: str) -> web.StreamResponse:
        q = request.query
        with self.lock:
            pod = self._get("pods", ns, name)
            containers = [c["name"] for c in pod["spec"]["containers"]]
            container = q.get("container") or (containers[0] if len(containers) == 1 else None)
            if container not in containers:
                raise ApiError(400, "BadRequest", f"a container name must be specified for pod {name}, choose one of: {containers}")
            status = next((s for s in pod["status"].get("containerStatuses") or [] if s["name"] == container), None)
            if status is None or "waiting" in status["state"]:
                reason = (status or {}).get("state", {}).get("waiting", {}).get("reason", "ContainerCreating")
                raise ApiError(400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: {reason}')
        follow = _bool(q.get("follow"))
        stamps = _bool(q.get("timestamps"))
        since = None
        if q.get("sinceSeconds"):
            since = datetime.fromtimestamp(time.time() - int(q["sinceSeconds"]), UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
        elif q.get("sinceTime"):
            since = q["sinceTime"].rstrip("Z")
        tail = int(q["tailLines"]) if q.get("tailLines") else None
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        sent = 0
        first = True
        while True:
            with self.lock:
                lines = list(self.logs.get((ns, name), []))
                done = (ns, name) not in self.procs or self.procs[(ns, name)]["proc"].poll() is not None and self.procs[(ns, name)].get("drained")
            chunk = lines[sent:]
            sent = len(lines)
            if first and tail is not None:
                chunk = chunk[-tail:] if tail else []
            first = False
            for ts, line in chunk:
                if since and ts[:26] < since[:26]:
                    continue
                await resp.write((ts.encode() + b" " + line) if stamps else line)
            if not follow or done or self._stop.is_set():
                break
            await asyncio.sleep(0.05)
        await resp.write_eof()
        return resp

    # --- verbs -------------------------------------------------------------------------------
    def _get(self, resource: str, ns: str, name: str) -> dict:
        obj = self.objects.get((resource, ns, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
        return copy.deepcopy(obj)

    def _create(self, resource: str, ns: str, obj: dict) -> dict:
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the body is not an object")
        api, kind = KINDS[resource]
        obj.setdefault("apiVersion", api)
        obj.setdefault("kind", kind)
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace") not in (None, ns):
            raise ApiError(400, "BadRequest", f"the namespace of the object ({meta['namespace']}) does not match the namespace on the request ({ns})")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        self._validate(resource, obj)
        if (resource, ns, meta["name"]) in self.objects:
            raise ApiError(409, "AlreadyExists", f'{resource} "{meta["name"]}" already exists')
        meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
        if resource == "pods":
            obj["status"] = {"phase": "Pending", "conditions": [], "qosClass": self._qos(obj)}
            self.procs.pop((ns, meta["name"]), None)
        elif resource == "jobs":
            obj["status"] = {"startTime": now(), "active": 0, "succeeded": 0, "failed": 0, "ready": 0}
        elif resource == "secrets":
            for k, v in (obj.pop("stringData", None) or {}).items():
                obj.setdefault("data", {})[k] = base64.b64encode(v.encode()).decode()
        elif resource == "persistentvolumeclaims":
            obj["status"] = {"phase": "Bound"}
        self.objects[(resource, ns, meta["name"])] = obj
        self._record("ADDED", resource, ns, obj)
        return copy.deepcopy(obj)

    def _patch(self, resource: str, ns: str, name: str, body) -> dict:
        obj = self.objects.get((resource, ns, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
        if isinstance(body, list):
            raise ApiError(415, "UnsupportedMediaType", "emulator: JSON patch is not emulated; use a merge patch")
        patched = merge_patch(obj, body)
        for k in ("name", "namespace", "uid"):
            if patched["metadata"].get(k) != obj["metadata"].get(k):
                raise ApiError(422, "Invalid", f"metadata.{k}: field is immutable")
        self._validate_labels(patched["metadata"])
        obj.clear()
        obj.update(patched)
        self._record("MODIFIED", resource, ns, obj)
        return copy.deepcopy(obj)

    def _delete(self, resource: str, ns: str, name: str, q, body: dict) -> dict:
        obj = self.objects.get((resource, ns, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
        if resource == "pods":
            grace = q.get("gracePeriodSeconds", body.get("gracePeriodSeconds"))
            grace = int(grace) if grace is not None else int(obj["spec"].get("terminationGracePeriodSeconds", 30))
            if not obj["metadata"].get("deletionTimestamp"):
                obj["metadata"]["deletionTimestamp"] = now()
                obj["metadata"]["deletionGracePeriodSeconds"] = grace
                self._event(obj, "Normal", "Killing", f"Stopping container {obj['spec']['containers'][0]['name']}")
                self._record("MODIFIED", resource, ns, obj)
            self._terminate(ns, name, grace)
            return copy.deepcopy(obj)
        if resource == "jobs":
            policy = q.get("propagationPolicy") or body.get("propagationPolicy") or "Orphan"  # the API's default for Jobs
            for pod in self._owned_pods(ns, obj):
                if policy == "Orphan":
                    pod["metadata"].pop("ownerReferences", None)
                else:
                    self._delete("pods", ns, pod["metadata"]["name"], {}, {})
        return self._remove(resource, ns, name)

    def _remove(self, resource: str, ns: str, name: str) -> dict:
        obj = self.objects.pop((resource, ns, name))
        self.deleted.append((resource, ns, name))
        self._record("DELETED", resource, ns, obj)
        return copy.deepcopy(obj)

    # --- validation --------------------------------------------------------------------------
    def _invalid(self, obj: dict, message: str):
        raise ApiError(422, "Invalid", f'{obj["kind"]} "{obj["metadata"].get("name")}" is invalid: {message}')

    def _validate(self, resource: str, obj: dict) -> None:
        import kubernetes_validate

        try:
            kubernetes_validate.validate(obj, self.schema_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            self._invalid(obj, f"{'.'.join(str(p) for p in e.path)}: {e.message}")
        meta = obj["metadata"]
        name = meta.get("name") or ""
        if resource == "services":
            if len(name) > 63 or not DNS1035_LABEL.match(name):
                self._invalid(obj, f"metadata.name: {name!r}: a DNS-1035 label (63 characters, lower case, starting with a letter)")
        elif len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
            self._invalid(obj, f"metadata.name: {name!r}: a DNS-1123 subdomain")
        self._validate_labels(meta, obj)
        if resource == "pods":
            self._validate_pod_spec(obj, obj["spec"], "spec")
        elif resource == "jobs":
            self._validate_job(obj)
        elif resource == "services":
            spec = obj.get("spec") or {}
            if spec.get("clusterIP") not in (None, "None", ""):
                self._invalid(obj, "spec.clusterIP: the emulator has no cluster IPs; only headless Services")
            ports = spec.get("ports") or []
            names = [p.get("name") for p in ports]
            if len(set(names)) != len(names):
                self._invalid(obj, "spec.ports: names must be unique")
            for p in ports:
                if not 1 <= int(p["port"]) <= 65535:
                    self._invalid(obj, f"spec.ports.port: {p['port']}: between 1 and 65535")

    def _validate_labels(self, meta: dict, obj: dict | None = None) -> None:
        obj = obj or {"kind": "object", "metadata": meta}
        for k, v in (meta.get("labels") or {}).items():
            prefix, _, key = k.rpartition("/")
            if len(key) > 63 or not LABEL_NAME.match(key) or (prefix and not DNS1123_SUBDOMAIN.match(prefix)):
                self._invalid(obj, f"metadata.labels: {k!r}: not a valid label key")
            if len(str(v)) > 63 or not LABEL_VALUE.match(str(v)):
                self._invalid(obj, f"metadata.labels: {k}={v!r}: a label value has 63 characters at most, alphanumeric at both ends")

    def _validate_pod_spec(self, obj: dict, spec: dict, where: str) -> None:
        names = [c["name"] for c in spec.get("containers", []) + spec.get("initContainers", [])]
        if len(set(names)) != len(names) or not all(DNS1123_LABEL.match(n) and len(n) <= 63 for n in names):
            self._invalid(obj, f"{where}.containers: names must be unique DNS labels: {names}")
        volumes = {v["name"] for v in spec.get("volumes") or []}
        if spec.get("restartPolicy", "Always") not in ("Always", "OnFailure", "Never"):
            self._invalid(obj, f"{where}.restartPolicy: {spec['restartPolicy']!r}")
        for field in ("hostname", "subdomain"):
            if spec.get(field) and (len(spec[field]) > 63 or not DNS1123_LABEL.match(spec[field])):
                self._invalid(obj, f"{where}.{field}: {spec[field]!r}: a DNS-1123 label (63 characters)")
        if spec.get("activeDeadlineSeconds") is not None and spec["activeDeadlineSeconds"] <= 0:
            self._invalid(obj, f"{where}.activeDeadlineSeconds: must be > 0")
        for c in spec.get("containers", []):
            cw = f"{where}.containers[{c['name']}]"
            for e in c.get("env") or []:
                if not ENV_NAME.match(e["name"]):
                    self._invalid(obj, f"{cw}.env: {e['name']!r}: not a valid variable name")
            paths = [m["mountPath"] for m in c.get("volumeMounts") or []]
            if len(set(paths)) != len(paths):
                self._invalid(obj, f"{cw}.volumeMounts: mount paths must be unique")
            for m in c.get("volumeMounts") or []:
                if m["name"] not in volumes:
                    self._invalid(obj, f"{cw}.volumeMounts.name: {m['name']!r} is not a volume of the pod")
            res = c.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            for r in set(req) | set(lim):
                if "/" in r and not r.startswith(("kubernetes.io/", "requests.", "hugepages-")):
                    if req.get(r, lim.get(r)) != lim.get(r, req.get(r)):
                        self._invalid(obj, f"{cw}.resources.requests[{r}]: must be equal to the limit (an extended resource is never overcommitted)")
                    if not re.fullmatch(r"\d+", str(lim.get(r, req.get(r)))):
                        self._invalid(obj, f"{cw}.resources[{r}]: must be a whole number")
                elif r in req and r in lim and _quantity(req[r]) > _quantity(lim[r]):
                    self._invalid(obj, f"{cw}.resources.requests[{r}]: must be less than or equal to the limit")

    def _validate_job(self, obj: dict) -> None:
        spec = obj["spec"]
        tspec = spec["template"].get("spec") or {}
        self._validate_labels(spec["template"].get("metadata") or {}, obj)
        self._validate_pod_spec(obj, tspec, "spec.template.spec")
        restart = tspec.get("restartPolicy", "Always")
        if restart not in ("Never", "OnFailure"):
            self._invalid(obj, f"spec.template.spec.restartPolicy: {restart!r}: must be Never or OnFailure for a Job")
        pfp = spec.get("podFailurePolicy")
        if pfp:
            if restart != "Never":
                self._invalid(obj, "spec.podFailurePolicy: only allowed when spec.template.spec.restartPolicy is Never")
            containers = {c["name"] for c in tspec.get("containers", [])}
            for i, rule in enumerate(pfp.get("rules") or []):
                oec = rule.get("onExitCodes")
                if oec:
                    if oec.get("containerName") and oec["containerName"] not in containers:
                        self._invalid(obj, f"spec.podFailurePolicy.rules[{i}].onExitCodes.containerName: {oec['containerName']!r} is not a container of the template")
                    if oec["operator"] == "In" and 0 in oec["values"]:
                        self._invalid(obj, f"spec.podFailurePolicy.rules[{i}].onExitCodes.values: 0 is not allowed with In")
        if spec.get("completionMode") == "Indexed":
            if spec.get("completions") is None:
                self._invalid(obj, "spec.completions: required when completionMode is Indexed")
            host = f"{obj['metadata']['name']}-{max(int(spec['completions']) - 1, 0)}"
            if len(host) > 63:
                self._invalid(obj, f"metadata.name: the pods' host name {host!r} would be {len(host)} characters; "
                                   "a Job's name plus -<index> must fit 63 (its pods could never be created)")
        for f in ("backoffLimit", "parallelism", "completions"):
            if spec.get(f) is not None and spec[f] < 0:
                self._invalid(obj, f"spec.{f}: must be >= 0")

    def _qos(self, pod: dict) -> str:
        cs = pod["spec"]["containers"]
        if all((c.get("resources") or {}).get("limits") and (c["resources"].get("requests") in (None, c["resources"]["limits"])) for c in cs):
            return "Guaranteed"
        return "Burstable" if any(c.get("resources") for c in cs) else "BestEffort"

    # --- events ------------------------------------------------------------------------------
    def _event(self, obj: dict, type_: str, reason: str, message: str) -> None:
        ns = obj["metadata"]["namespace"]
        name = f"{obj['metadata']['name']}.{secrets.token_hex(8)}"
        ev = {"apiVersion": "v1", "kind": "Event",
              "metadata": {"name": name, "namespace": ns, "uid": str(uuid.uuid4()), "creationTimestamp": now()},
              "involvedObject": {"kind": obj["kind"], "name": obj["metadata"]["name"], "namespace": ns,
                                 "uid": obj["metadata"].get("uid"), "apiVersion": obj["apiVersion"]},
              "reason": reason, "message": message, "type": type_, "count": 1,
              "firstTimestamp": now(), "lastTimestamp": now(), "source": {"component": "k8s-emulator"}}
        self.objects[("events", ns, name)] = ev
        self._record("ADDED", "events", ns, ev)

    def events(self, ns: str, name: str) -> list[tuple[str, str]]:
        with self.lock:
            return [(e["reason"], e["message"]) for (r, n, _), e in self.objects.items()
                    if r == "events" and n == ns and e["involvedObject"]["name"] == name]

    # --- kubelet -----------------------------------------------------------------------------
    def _kubelet_loop(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                try:
                    for (resource, ns, name), obj in list(self.objects.items()):
                        if resource == "pods":
                            self._step_pod(ns, name, obj)
                    for (resource, ns, name), obj in list(self.objects.items()):
                        if resource == "jobs":
                            self._step_job(ns, obj)
                except Exception as exc:  # an emulator bug must be loud, not a hang
                    import traceback

                    traceback.print_exc()
                    self.kubelet_error = exc
            time.sleep(0.05)

    def _set_phase(self, pod: dict, phase: str, **status) -> None:
        pod["status"].update(phase=phase, **status)
        self._record("MODIFIED", "pods", pod["metadata"]["namespace"], pod)

    def _step_pod(self, ns: str, name: str, pod: dict) -> None:
        st = pod["status"]
        info = self.procs.get((ns, name))
        if pod["metadata"].get("deletionTimestamp") and (info is None or (info["proc"].poll() is not None and info.get("drained"))):
            self._remove("pods", ns, name)
            return
        if st["phase"] == "Pending" and info is None and not pod["metadata"].get("deletionTimestamp"):
            self._schedule_and_start(ns, name, pod)
            return
        if info is None:
            return
        proc = info["proc"]
        code = proc.poll()
        if code is None:
            deadline = pod["spec"].get("activeDeadlineSeconds")
            if deadline and time.time() - info["started"] > deadline and not info.get("deadline_hit"):
                info["deadline_hit"] = True
                self._event(pod, "Warning", "DeadlineExceeded", f"Pod was active on the node longer than the specified deadline")
                self._terminate(ns, name, int(pod["spec"].get("terminationGracePeriodSeconds", 30)))
            return
        if not info.get("drained") or st["phase"] in ("Succeeded", "Failed"):
            return
        exit_code = code if code >= 0 else 128 - code
        c = pod["spec"]["containers"][0]
        terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                      "startedAt": info["started_at"], "finishedAt": now(), "containerID": info["cid"]}
        st["containerStatuses"] = [{"name": c["name"], "image": c["image"], "imageID": f"emulator://{c['image']}",
                                    "containerID": info["cid"], "ready": False, "started": False, "restartCount": 0,
                                    "state": {"terminated": terminated}}]
        for cond in st["conditions"]:
            if cond["type"] in ("Ready", "ContainersReady"):
                cond.update(status="False", lastTransitionTime=now())
        if info.get("deadline_hit"):
            self._set_phase(pod, "Failed", reason="DeadlineExceeded", message="Pod was active on the node longer than the specified deadline")
        else:
            self._set_phase(pod, "Succeeded" if exit_code == 0 else "Failed")

    def _unschedulable(self, pod: dict, message: str) -> None:
        if not any(c["type"] == "PodScheduled" for c in pod["status"]["conditions"]):
            pod["status"]["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                "message": message, "lastTransitionTime": now()})
            self._event(pod, "Warning", "FailedScheduling", message)
            self._record("MODIFIED", "pods", pod["metadata"]["namespace"], pod)

    def _waiting(self, pod: dict, reason: str, message: str) -> None:
        c = pod["spec"]["containers"][0]
        waiting = {"waiting": {"reason": reason, "message": message}}
        statuses = pod["status"].get("containerStatuses") or []
        if not statuses or statuses[0]["state"] != waiting:
            pod["status"]["containerStatuses"] = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": False,
                                                   "started": False, "restartCount": 0, "state": waiting}]
            self._event(pod, "Warning", "Failed", f"Error: {reason}: {message}")
            self._record("MODIFIED", "pods", pod["metadata"]["namespace"], pod)

    def _schedule_and_start(self, ns: str, name: str, pod: dict) -> None:
        spec = pod["spec"]
        selector = spec.get("nodeSelector") or {}
        gpus = sum(int(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0)) for c in spec["containers"])
        missing_claims = [v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes") or []
                          if v.get("persistentVolumeClaim") and ("persistentvolumeclaims", ns, v["persistentVolumeClaim"]["claimName"]) not in self.objects]
        if missing_claims:
            return self._unschedulable(pod, f'0/1 nodes are available: persistentvolumeclaim "{missing_claims[0]}" not found.')
        if any(self.node_labels.get(k) != v for k, v in selector.items()):
            return self._unschedulable(pod, "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.")
        if gpus > self.node_gpus:
            return self._unschedulable(pod, "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
        if not any(c["type"] == "PodScheduled" and c["status"] == "True" for c in pod["status"]["conditions"]):
            pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}]
            spec["nodeName"] = "emulator"
            self._event(pod, "Normal", "Scheduled", f"Successfully assigned {ns}/{name} to emulator")
            self._record("MODIFIED", "pods", ns, pod)
        c = spec["containers"][0]
        image = self.images.get(c.get("image"))
        if image is None:
            return self._waiting(pod, "ErrImagePull", f'failed to pull image "{c.get("image")}": not found in the emulator\'s images')
        try:
            env = self._container_env(pod, c, image)
        except ApiError as e:
            return self._waiting(pod, "CreateContainerConfigError", e.message)
        sc = {**(spec.get("securityContext") or {}), **(c.get("securityContext") or {})}
        if sc.get("runAsNonRoot") and sc.get("runAsUser", image.get("user", 1000)) == 0:
            return self._waiting(pod, "CreateContainerConfigError", "container has runAsNonRoot and image will run as root")
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for m in c.get("volumeMounts") or []:
            if volumes[m["name"]].get("persistentVolumeClaim") and not Path(m["mountPath"]).is_dir():
                return self._waiting(pod, "CreateContainerError", f"emulator: mountPath {m['mountPath']} is not a folder on this machine "
                                     "(the emulator runs containers in place: give the claim the path the workers use)")
        argv = [self._resolve_hosts(ns, expand_vars(a, env)) for a in (c.get("command") or []) + (c.get("args") or [])]
        if not argv:
            return self._waiting(pod, "CreateContainerError", "emulator: the container has no command (images have no entrypoint here)")
        env = {k: self._resolve_hosts(ns, v) for k, v in env.items()}
        scratch = self.root / "pods" / ns / name
        scratch.mkdir(parents=True, exist_ok=True)
        (scratch / "home").mkdir(exist_ok=True)
        env.setdefault("HOME", str(scratch / "home"))
        cwd = c.get("workingDir") or str(scratch)
        if not Path(cwd).is_dir():
            return self._waiting(pod, "CreateContainerError", f"emulator: workingDir {cwd} does not exist on this machine")
        exe = _which(argv[0], env["PATH"])
        if exe is None:
            return self._waiting(pod, "RunContainerError", f'exec: "{argv[0]}": executable file not found in $PATH')
        proc = subprocess.Popen([exe, *argv[1:]], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        cid = f"emulator://{proc.pid}"
        info = {"proc": proc, "started": time.time(), "started_at": now(), "cid": cid, "argv": argv, "env": env}
        self.procs[(ns, name)] = info
        self.logs[(ns, name)] = []
        threading.Thread(target=self._read_output, args=(ns, name, info), daemon=True).start()
        st = pod["status"]
        st["conditions"] = [{"type": t, "status": "True", "lastTransitionTime": now()}
                            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
        st["containerStatuses"] = [{"name": c["name"], "image": c["image"], "imageID": f"emulator://{c['image']}",
                                    "containerID": cid, "ready": True, "started": True, "restartCount": 0,
                                    "state": {"running": {"startedAt": info["started_at"]}}}]
        self._event(pod, "Normal", "Pulled", f'Container image "{c["image"]}" already present on machine')
        self._event(pod, "Normal", "Started", f"Started container {c['name']}")
        self._set_phase(pod, "Running", podIP="127.0.0.1", podIPs=[{"ip": "127.0.0.1"}], hostIP="127.0.0.1", startTime=now())

    def _read_output(self, ns: str, name: str, info: dict) -> None:
        for line in iter(info["proc"].stdout.readline, b""):
            with self.lock:
                self.logs[(ns, name)].append((now_nano(), line if line.endswith(b"\n") else line + b"\n"))
        info["proc"].wait()
        with self.lock:
            info["drained"] = True

    def _container_env(self, pod: dict, c: dict, image: dict) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        spec = pod["spec"]
        hostname = spec.get("hostname") or pod["metadata"]["name"][:63]
        env = {"PATH": os.pathsep.join([*image.get("path", []), "/usr/local/bin", "/usr/bin", "/bin"]),
               "HOSTNAME": hostname, "LANG": "C.UTF-8",
               "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.port)}
        env.update(image.get("env") or {})

        def secret(name: str, optional: bool) -> dict | None:
            s = self.objects.get(("secrets", ns, name))
            if s is None and not optional:
                raise ApiError(400, "CreateContainerConfigError", f'secret "{name}" not found')
            return s

        for src in c.get("envFrom") or []:
            if "secretRef" in src:
                s = secret(src["secretRef"]["name"], src["secretRef"].get("optional", False))
                for k, v in ((s or {}).get("data") or {}).items():
                    env[(src.get("prefix") or "") + k] = base64.b64decode(v).decode()
            elif "configMapRef" in src:
                cm = self.objects.get(("configmaps", ns, src["configMapRef"]["name"])) or {}
                env.update(cm.get("data") or {})
        for e in c.get("env") or []:
            if "value" in e:
                env[e["name"]] = expand_vars(e["value"], env)
                continue
            vf = e.get("valueFrom") or {}
            if "secretKeyRef" in vf:
                ref = vf["secretKeyRef"]
                s = secret(ref["name"], ref.get("optional", False))
                data = (s or {}).get("data") or {}
                if ref["key"] in data:
                    env[e["name"]] = base64.b64decode(data[ref["key"]]).decode()
                elif s is not None and not ref.get("optional"):
                    raise ApiError(400, "CreateContainerConfigError", f'couldn\'t find key {ref["key"]} in Secret {ns}/{ref["name"]}')
            elif "fieldRef" in vf:
                env[e["name"]] = self._field(pod, vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                r = vf["resourceFieldRef"]["resource"]
                kind, _, res = r.partition(".")
                env[e["name"]] = str(((c.get("resources") or {}).get(kind) or {}).get(res, "0"))
            elif vf:
                raise ApiError(400, "CreateContainerConfigError", f"emulator: valueFrom {sorted(vf)} is not emulated")
            else:
                env[e["name"]] = ""
        return env

    def _field(self, pod: dict, path: str) -> str:
        m = re.match(r"^metadata\.(labels|annotations)\['([^']+)'\]$", path)
        if m:
            return str((pod["metadata"].get(m.group(1)) or {}).get(m.group(2), ""))
        simple = {"metadata.name": pod["metadata"]["name"], "metadata.namespace": pod["metadata"]["namespace"],
                  "metadata.uid": pod["metadata"]["uid"], "spec.nodeName": "emulator",
                  "spec.serviceAccountName": pod["spec"].get("serviceAccountName") or "default",
                  "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}
        if path not in simple:
            raise ApiError(400, "CreateContainerConfigError", f"emulator: fieldRef {path} is not emulated")
        return simple[path]

    def _resolve_hosts(self, ns: str, text: str) -> str:
        """Cluster DNS, emulated: `<host>.<service>[.<ns>[.svc[.cluster.local]]]` of a pod the headless
        Service selects becomes 127.0.0.1 (all pods run on this machine)."""
        def replace(m: re.Match) -> str:
            host, service, svc_ns = m.group(1), m.group(2), m.group(3) or ns
            svc = self.objects.get(("services", svc_ns, service))
            if svc is None or (svc.get("spec") or {}).get("clusterIP") != "None":
                return m.group(0)
            selector = (svc["spec"].get("selector") or {})
            for (r, n, _), p in self.objects.items():
                if r == "pods" and n == svc_ns and p["spec"].get("hostname") == host and p["spec"].get("subdomain") == service \
                        and all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items()) \
                        and (svc["spec"].get("publishNotReadyAddresses") or p["status"].get("phase") == "Running"):
                    return "127.0.0.1"
            return m.group(0)

        return re.sub(r"\b([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.([a-z]([-a-z0-9]*[a-z0-9])?)(?:\.([a-z0-9-]+)(?:\.svc(?:\.cluster\.local)?)?)?\b",
                      lambda m: replace(_Groups(m)), text)

    def _signal(self, info: dict, sig) -> None:
        try:
            os.killpg(info["proc"].pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _terminate(self, ns: str, name: str, grace: int) -> None:
        info = self.procs.get((ns, name))
        if info is None or info["proc"].poll() is not None:
            return
        self._signal(info, signal.SIGTERM)

        def kill_later():
            time.sleep(grace)
            if info["proc"].poll() is None:
                self._signal(info, signal.SIGKILL)

        threading.Thread(target=kill_later, daemon=True).start()

    # --- Job controller ----------------------------------------------------------------------
    def _owned_pods(self, ns: str, job: dict) -> list[dict]:
        uid = job["metadata"]["uid"]
        return [p for (r, n, _), p in list(self.objects.items()) if r == "pods" and n == ns
                and any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])]

    def _make_job_pod(self, ns: str, job: dict, index: int) -> None:
        spec = job["spec"]
        name = job["metadata"]["name"]
        tmpl = copy.deepcopy(spec["template"])
        meta = tmpl.get("metadata") or {}
        labels = {**(meta.get("labels") or {}), "batch.kubernetes.io/controller-uid": job["metadata"]["uid"],
                  "controller-uid": job["metadata"]["uid"], "batch.kubernetes.io/job-name": name, "job-name": name}
        annotations = dict(meta.get("annotations") or {})
        pspec = tmpl["spec"]
        indexed = spec.get("completionMode") == "Indexed"
        if indexed:
            labels[INDEX_KEY] = str(index)
            annotations[INDEX_KEY] = str(index)
            pspec.setdefault("hostname", f"{name}-{index}")
            for c in pspec["containers"]:
                if not any(e["name"] == "JOB_COMPLETION_INDEX" for e in c.get("env") or []):
                    c.setdefault("env", []).append({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                        "fieldPath": f"metadata.annotations['{INDEX_KEY}']"}}})
        pod = {"apiVersion": "v1", "kind": "Pod", "spec": pspec,
               "metadata": {"generateName": f"{name}-{index}-" if indexed else f"{name}-", "labels": labels,
                            "annotations": annotations,
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                                 "uid": job["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]}}
        self._create("pods", ns, pod)
        self._event(job, "Normal", "SuccessfulCreate", f"Created pod: {pod['metadata']['name']}")

    def _job_condition(self, job: dict, type_: str, reason: str = "", message: str = "") -> None:
        job["status"].setdefault("conditions", []).append({
            "type": type_, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": now(), "lastTransitionTime": now()})

    def _step_job(self, ns: str, job: dict) -> None:
        spec, st = job["spec"], job["status"]
        if any(c["type"] in ("Complete", "Failed") for c in st.get("conditions") or []) or spec.get("suspend"):
            return
        completions = int(spec.get("completions") or 1)
        parallelism = int(spec.get("parallelism") if spec.get("parallelism") is not None else 1)
        indexed = spec.get("completionMode") == "Indexed"
        if job["metadata"]["uid"] not in self._started_jobs:
            self._started_jobs.add(job["metadata"]["uid"])
            for i in range(min(completions, parallelism) if indexed else parallelism):
                self._make_job_pod(ns, job, i)
            self._record("MODIFIED", "jobs", ns, job)
            return
        pods = self._owned_pods(ns, job)
        succeeded = {int(p["metadata"]["annotations"].get(INDEX_KEY, 0)) for p in pods if p["status"]["phase"] == "Succeeded"}
        failed_pods = [p for p in pods if p["status"]["phase"] == "Failed" and p["metadata"]["uid"] not in self._counted_failures]
        active = [p for p in pods if p["status"]["phase"] in ("Pending", "Running") and not p["metadata"].get("deletionTimestamp")]
        for p in failed_pods:
            self._counted_failures.add(p["metadata"]["uid"])
            action = self._failure_action(spec, p)
            if action == "FailJob":
                code = p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"]
                message = (f"Container {p['spec']['containers'][0]['name']} for pod {ns}/{p['metadata']['name']} failed with "
                           f"exit code {code} matching FailJob rule at index 0")
                return self._fail_job(ns, job, "PodFailurePolicy", message, active)
            if action == "Ignore":
                st["active"] = len(active)
                self._replace(ns, job, p)
                continue
            st["failed"] = st.get("failed", 0) + 1
            if st["failed"] > int(spec.get("backoffLimit", 6)):
                return self._fail_job(ns, job, "BackoffLimitExceeded", "Job has reached the specified backoff limit", active)
            self._replace(ns, job, p)
        deadline = spec.get("activeDeadlineSeconds")
        started = datetime.strptime(st["startTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        if deadline and time.time() - started > deadline:
            return self._fail_job(ns, job, "DeadlineExceeded", "Job was active longer than specified deadline", active)
        changed = (st.get("active"), st.get("succeeded")) != (len(active), len(succeeded))
        st["active"], st["succeeded"] = len(active), len(succeeded)
        if indexed:
            st["completedIndexes"] = _ranges(sorted(succeeded))
        if len(succeeded) >= completions:
            st["completionTime"] = now()
            self._job_condition(job, "SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods")
            self._job_condition(job, "Complete", "CompletionsReached", "Reached expected number of succeeded pods")
            self._event(job, "Normal", "Completed", "Job completed")
            changed = True
        if changed:
            self._record("MODIFIED", "jobs", ns, job)

    def _failure_action(self, spec: dict, pod: dict) -> str:
        cstat = (pod["status"].get("containerStatuses") or [{}])[0]
        code = (cstat.get("state") or {}).get("terminated", {}).get("exitCode")
        for rule in (spec.get("podFailurePolicy") or {}).get("rules") or []:
            oec = rule.get("onExitCodes")
            if oec and code is not None and (not oec.get("containerName") or oec["containerName"] == cstat.get("name")):
                hit = code in oec["values"]
                if hit if oec["operator"] == "In" else not hit:
                    return rule["action"]
        return "Count"

    def _replace(self, ns: str, job: dict, failed_pod: dict) -> None:
        index = int(failed_pod["metadata"]["annotations"].get(INDEX_KEY, 0))
        self._make_job_pod(ns, job, index)

    def _fail_job(self, ns: str, job: dict, reason: str, message: str, active: list[dict]) -> None:
        job["status"]["failed"] = job["status"].get("failed", 0) + 1
        self._job_condition(job, "FailureTarget", reason, message)
        self._job_condition(job, "Failed", reason, message)
        job["status"]["active"] = 0
        self._event(job, "Warning", reason, message)
        for p in active:  # the Job controller deletes a failed Job's running pods
            self._delete("pods", ns, p["metadata"]["name"], {}, {})
        self._record("MODIFIED", "jobs", ns, job)


class _Groups:
    """The host-name regex's groups, named for `_resolve_hosts`."""

    def __init__(self, m: re.Match):
        self._m = m

    def group(self, i: int):
        g = self._m.groups()
        return {0: self._m.group(0), 1: g[0], 2: g[2], 3: g[4]}[i]


def _bool(value: str | None) -> bool:
    """Go's strconv.ParseBool, as the API server reads query parameters (the Python client sends True)."""
    return value in ("1", "t", "T", "TRUE", "true", "True")


def _ranges(indexes: list[int]) -> str:
    out, start = [], None
    for i, v in enumerate(indexes):
        if start is None:
            start = v
        if i + 1 == len(indexes) or indexes[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ",".join(out)


def _quantity(q) -> float:
    s = str(q)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    for u, f in units.items():
        if s.endswith(u):
            return float(s[: -len(u)]) * f
    return float(s)


def _which(cmd: str, path: str) -> str | None:
    if "/" in cmd:
        return cmd if os.access(cmd, os.X_OK) else None
    for d in path.split(os.pathsep):
        p = Path(d) / cmd
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None
