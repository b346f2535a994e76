#!/usr/bin/env bash
# The embedded default's services, started by `make up` and stopped by `make down`:
# Airflow (api-server, scheduler, dag-processor, triggerer) and an MLflow server, all on SQLite
# under $AIRTUNE_HOME, listening on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export AIRTUNE_HOME=${AIRTUNE_HOME:-$PWD/.airtune}
eval "$($BIN/python -c 'from airtune import localstack; import shlex; print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in localstack.environment().items()))')"
# deploy/airflow_local_settings.py: the policy that gives each train task its location's pool slots
export PYTHONPATH="$PWD/deploy${PYTHONPATH:+:$PYTHONPATH}"
RUN=$AIRTUNE_HOME/run
LOGS=$AIRTUNE_HOME/logs
mkdir -p "$RUN" "$LOGS" "$AIRTUNE_HOME/mlflow"

start() {  # name, command...
  local name=$1; shift
  if [ -f "$RUN/$name.pid" ] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then
    echo "  $name already running (pid $(cat "$RUN/$name.pid"))"; return
  fi
  setsid nohup "$@" >"$LOGS/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  echo "  $name started (log: $LOGS/$name.log)"
}

wait_http() {  # url, seconds
  for _ in $(seq "$2"); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 1; done
  echo "  $1 did not answer in $2 s" >&2; return 1
}

case "${1:-up}" in
  up)
    $BIN/python -c 'from airtune import localstack; localstack.ensure_airflow_db()'
    $BIN/python -m airtune.pools  # one pool per location of configs/locations.yaml (airtune.pools)
    echo "Starting airtune's embedded stack:"
    start mlflow $BIN/mlflow server --host 127.0.0.1 --port 5000 \
      --backend-store-uri "$MLFLOW_TRACKING_URI" --default-artifact-root "$AIRTUNE_HOME/mlflow/artifacts"
    start api-server $BIN/airflow api-server --host 127.0.0.1 --port 8080
    # --skip-serve-logs: Airflow's log servers listen on every interface (no host setting); here
    # the api-server reads the task logs from the same disk.
    start scheduler $BIN/airflow scheduler --skip-serve-logs
    start dag-processor $BIN/airflow dag-processor
    start triggerer $BIN/airflow triggerer --skip-serve-logs
    wait_http http://127.0.0.1:8080/api/v2/monitor/health 120
    wait_http http://127.0.0.1:5000/health 60
    pw=$($BIN/python -c 'import json,os,sys; p=os.path.join(os.environ["AIRFLOW_HOME"],"simple_auth_manager_passwords.json.generated"); print(json.load(open(p)).get("admin","?"))' 2>/dev/null || echo "see $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated")
    echo
    echo "Airflow  http://127.0.0.1:8080   login: admin / $pw"
    echo "MLflow   http://127.0.0.1:5000"
    echo "Stop with: make down"
    ;;
  down)
    for f in "$RUN"/*.pid; do
      [ -e "$f" ] || continue
      pid=$(cat "$f"); name=$(basename "$f" .pid)
      if kill -0 "$pid" 2>/dev/null; then kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"; echo "stopped $name"; fi
      rm -f "$f"
    done
    ;;
  status)
    for f in "$RUN"/*.pid; do
      [ -e "$f" ] || { echo "nothing running"; break; }
      pid=$(cat "$f"); name=$(basename "$f" .pid)
      if kill -0 "$pid" 2>/dev/null; then echo "$name: running (pid $pid)"; else echo "$name: stopped"; fi
    done
    ;;
esac
