"""The create wizard's routes:

    GET  /airtune/create                 the wizard (read)
    GET  /airtune/api/create/choices     its select options: catalog, finished jobs, GPU types by location (read)
    POST /airtune/api/create/check       {values, lang?} -> errors at their fields, auto values, estimate (read)
    POST /airtune/api/create/preview     {values, rows?} -> the dataset preview (POST on the runs, as "Try
                                         it": it prepares data in a process of its own, compute a run spends)
    POST /airtune/api/create/submit      {values} -> checks again, then starts the run through Airflow's REST
                                         API (POST /api/v2/dags/airtune_finetune/dagRuns) with the caller's
                                         own token: Airflow's permission, as its trigger form's

Why not under /jobs/: /airtune/jobs/{name} and /airtune/api/jobs/{name} are a job's own pages, and any
word that fits a job name (new, choices, check ...) is a name someone may give a job. The wizard was at
/airtune/jobs/new, which hid the job named `new` (and /api/jobs/choices the job `choices`). Its routes
now live where no job name can reach (`create` is a path segment of its own, beside `jobs`), so no
name has to be reserved and the name rule stays the one of docs/form.md. tests/test_webapp_create.py
checks that no route of the app shadows a job's.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from airtune.webapp import create


def _lang(request: Request, body: dict | None = None) -> str:
    from airtune import form

    asked = (body or {}).get("lang") or request.query_params.get("lang")
    try:
        return form.form_lang(asked)
    except ValueError:
        return form.form_lang()


async def _body(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("values", {}), dict):
        raise HTTPException(400, 'send a JSON object: {"values": {field: value, ...}}')
    return body


def caller_token(request: Request) -> str | None:
    """The caller's own Airflow token: the bearer token it sent, else the api-server's session cookie."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE_NAME_JWT_TOKEN)


def api_url(request: Request) -> str:
    """Airflow's own API: [api] base_url, else this server (the plugin is mounted under /airtune)."""
    from airflow.configuration import conf

    from airtune.webapp import URL_PREFIX

    base = conf.get("api", "base_url", fallback=None)
    if base:
        return base.rstrip("/")
    root = request.scope.get("root_path", "").rstrip("/")
    root = root[: -len(URL_PREFIX)] if root.endswith(URL_PREFIX) else root
    return f"{request.url.scheme}://{request.url.netloc}{root}"


def register(app: FastAPI, *, read: list, trigger: list, base, same_origin) -> None:
    from airtune.webapp import create_templates

    @app.get("/create", dependencies=read, response_class=HTMLResponse)
    def new_job_page(request: Request):
        lang = _lang(request)
        return create_templates.render_wizard(base=base(request), lang=lang, choices=create.choices(lang),
                                              sections=create.sections(lang))

    @app.get("/api/create/choices", dependencies=read)
    def api_choices(request: Request):
        return create.choices(_lang(request))

    @app.post("/api/create/check", dependencies=read)
    async def api_check(request: Request):
        body = await _body(request)
        return await run_in_threadpool(create.check, body.get("values") or {}, _lang(request, body))

    @app.post("/api/create/preview", dependencies=trigger)
    async def api_preview(request: Request):
        same_origin(request, "preview")
        body = await _body(request)
        rows = body.get("rows", create.PREVIEW_ROWS)
        if not isinstance(rows, int) or isinstance(rows, bool) or not 1 <= rows <= 50:
            raise HTTPException(400, "preview: rows is an integer from 1 to 50")
        try:
            return await run_in_threadpool(create.preview, body.get("values") or {}, rows)
        except create.PreviewError as exc:
            raise HTTPException(exc.status, {"message": str(exc), **exc.extra}) from None

    @app.post("/api/create/submit", dependencies=trigger)
    async def api_submit(request: Request):
        same_origin(request, "create")
        body = await _body(request)
        token = caller_token(request)
        if not token:
            raise HTTPException(401, "not logged in")
        try:
            return await run_in_threadpool(create.submit, body.get("values") or {}, api_url=api_url(request),
                                           token=token, lang=_lang(request, body))
        except create.SubmitError as exc:
            raise HTTPException(exc.status, exc.detail) from None
