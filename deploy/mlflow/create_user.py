"""Create the MLflow account Airflow's tasks log with (the `mlflow-init` service), if it is missing.

Reads MLFLOW_TRACKING_URI, the admin's MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD and the account's
MLFLOW_TRACKING_USERNAME/PASSWORD. Waits up to 120 s for the server's /health. The account is a
plain user: it gets MANAGE on the experiments and models it creates, READ on the rest.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def call(url: str, auth: tuple[str, str], body: dict | None = None) -> tuple[int, str]:
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    request.add_header("Authorization", f"Basic {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def main() -> int:
    base = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
    admin = (os.environ["MLFLOW_AUTH_ADMIN_USERNAME"], os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"])
    user, password = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5):
                break
        except OSError:
            if time.monotonic() > deadline:
                print(f"mlflow-init: {base}/health did not answer in 120 s", file=sys.stderr)
                return 1
            time.sleep(2)
    if user == admin[0]:
        print(f"mlflow-init: Airflow logs to MLflow as the admin {user!r}; nothing to create")
        return 0
    status, _ = call(f"{base}/api/2.0/mlflow/users/get?username={urllib.parse.quote(user)}", admin)
    if status == 200:
        print(f"mlflow-init: user {user!r} exists")
        return 0
    status, text = call(f"{base}/api/2.0/mlflow/users/create", admin, {"username": user, "password": password})
    if status != 200:
        print(f"mlflow-init: creating user {user!r} failed: HTTP {status}: {text[:300]}", file=sys.stderr)
        return 1
    print(f"mlflow-init: created user {user!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
