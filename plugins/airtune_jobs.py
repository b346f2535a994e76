"""airtune's Airflow plugin: the jobs page (src/airtune/webapp), mounted in the api-server under
/airtune and shown in the Airflow UI's navigation as "Fine-tuning jobs".

Loaded by every Airflow component that loads plugins, so it imports nothing heavy: the FastAPI app
is built on its first request.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airtune.webapp import URL_PREFIX, app


class AirtuneJobsPlugin(AirflowPlugin):
    name = "airtune_jobs"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "airtune jobs"}]
    external_views = [
        {
            "name": "Fine-tuning jobs",
            "href": f"{URL_PREFIX}/jobs",
            "destination": "nav",
            "url_route": "airtune-jobs",
            "icon": f"{URL_PREFIX}/static/icon.svg",
        }
    ]
