"""The jobs page: a FastAPI app that Airflow's api-server mounts under /airtune (plugins/airtune_jobs.py).

    /airtune/jobs                 every job: name, state, base model, method, stage, start, duration,
                                  best metric
    /airtune/jobs/{name}          one job: the resolved spec, task states, a live log tail, the loss
                                  curve, checkpoints, the registered version, links to Airflow and
                                  MLflow; delete (asks for the job's name first); on a
                                  finished run, "Try it": one prompt to the job's model
    /airtune/api/jobs[/{name}]    the same as JSON
    POST /airtune/api/jobs/{name}/try   {"prompt": ...} -> the answer of the job's registered
                                  version (champion, else best, else the newest; greedy), by
                                  `airtune generate --json` in a process of its own, one at a
                                  time, at most 120 s; local jobs only

It reads what `airtune status` reads (airtune.status, airtune.tracking_report) and deletes with
`airtune delete` (airtune.jobs). Logins are Airflow's: the pages take the api-server's session
cookie or a bearer token, and ask Airflow's auth manager whether the user may read runs of
airtune_finetune (GET), trigger them (POST: what "Try it" needs, as it spends compute) or delete them.

Cheap to import: the plugin file imports this module in every Airflow component that loads
plugins, so FastAPI and the rest are imported on the first request (`LazyApp`).
"""

from __future__ import annotations

URL_PREFIX = "/airtune"


class LazyApp:
    """An ASGI app that builds the real one (airtune.webapp.app) on its first request."""

    def __init__(self) -> None:
        self._app = None

    def get(self):
        if self._app is None:
            from airtune.webapp.app import create_app

            self._app = create_app()
        return self._app

    async def __call__(self, scope, receive, send):
        await self.get()(scope, receive, send)


app = LazyApp()
