"""Start MLflow's tracking server with basic auth, its configuration rendered from the environment.

basic_auth.ini.template names environment variables as ${NAME}; MLflow's ini file has no way to
read them itself, and the auth store's URI holds a database password that must not live in a
file in the repository. The rendered file goes to a private temporary folder (mode 0600) and
MLFLOW_AUTH_CONFIG_PATH points there; then this process becomes `mlflow server`.

The rest of the server's settings are MLflow's own environment variables (docker-compose.yaml):
MLFLOW_BACKEND_STORE_URI, MLFLOW_ARTIFACTS_DESTINATION, MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD,
MLFLOW_FLASK_SERVER_SECRET_KEY, MLFLOW_SERVER_ALLOWED_HOSTS. Extra arguments are passed on.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

TEMPLATE = Path(__file__).with_name("basic_auth.ini.template")
REQUIRED = (
    "MLFLOW_BACKEND_STORE_URI",
    "MLFLOW_AUTH_DATABASE_URI",
    "MLFLOW_AUTH_ADMIN_USERNAME",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
)


def render(text: str, env: dict[str, str]) -> str:
    """Replace ${NAME} by env[NAME] outside comment lines; '%' is doubled (MLflow reads the ini
    with configparser's interpolation, where '%' is special)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if not env.get(name):
            raise SystemExit(f"mlflow: environment variable {name} is not set (needed by {TEMPLATE.name})")
        return env[name].replace("%", "%%")

    pattern = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
    return "".join(
        line if line.lstrip().startswith(("#", ";")) else pattern.sub(value, line)
        for line in text.splitlines(keepends=True)
    )


def main(argv: list[str]) -> None:
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        raise SystemExit(f"mlflow: set {', '.join(missing)} (see .env.example)")
    folder = Path(tempfile.mkdtemp(prefix="mlflow-auth-"))
    config = folder / "basic_auth.ini"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(render(TEMPLATE.read_text(), dict(os.environ)))
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
    args = ["mlflow", "server", "--app-name", "basic-auth", "--host", "0.0.0.0", "--port", "5000",
            "--serve-artifacts", *argv]
    os.execvp(args[0], args)


if __name__ == "__main__":
    main(sys.argv[1:])
