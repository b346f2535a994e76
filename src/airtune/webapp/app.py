"""The jobs page's routes (mounted by Airflow's api-server under /airtune; see airtune.webapp).

Who may do what is Airflow's auth manager's decision: reading needs GET on the runs of
airtune_finetune, trying a model ("Try it") needs POST on them (what triggering a run needs),
deleting needs DELETE on them. A browser that is not logged in is sent to Airflow's login page; an
API call gets 401.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from airtune.webapp import data, i18n, templates

ICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2">'
    '<path d="M3 3v18h18"/><path d="M7 15l4-4 3 3 6-7"/></svg>'
)


def _requires(method: str):
    """Airflow's own check (airflow.api_fastapi.core_api.security), on DAG runs of airtune_finetune."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag(method, DagAccessEntity.RUN, param_dag_id=data.FINETUNE_DAG))


def _base(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


def _lang(request: Request) -> str:
    """The page's language: the form's setting, else the browser's (i18n.page_lang)."""
    return i18n.page_lang(request.headers.get("accept-language"))


def _same_origin(request: Request, what: str = "delete") -> None:
    """A delete (or a prompt) must come from this site's own page (the cookie is SameSite=Lax too)."""
    origin = request.headers.get("origin")
    if origin and origin.rstrip("/") != f"{request.url.scheme}://{request.url.netloc}":
        raise HTTPException(403, f"{what}: refused from origin {origin}")


def create_app() -> FastAPI:
    app = FastAPI(title="airtune jobs", docs_url=None, redoc_url=None, openapi_url=None)
    read = [_requires("GET")]

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        wants_html = "text/html" in request.headers.get("accept", "") and not request.url.path.startswith(f"{_base(request)}/api/")
        if exc.status_code == 401 and wants_html:
            from airflow.api_fastapi.app import get_auth_manager

            return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)
        if wants_html:
            return HTMLResponse(templates.render("error.html", lang=_lang(request), base=_base(request), status=exc.status_code,
                                                 message=str(exc.detail)),
                                status_code=exc.status_code)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.get("/static/icon.svg", include_in_schema=False)
    def icon():
        return Response(ICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    # the create wizard (webapp/create_routes.py): /create and /api/create/..., where no job name reaches
    from airtune.webapp import create_routes

    create_routes.register(app, read=read, trigger=[_requires("POST")], base=_base, same_origin=_same_origin)

    @app.get("/", dependencies=read)
    def index(request: Request):
        return RedirectResponse(f"{_base(request)}/jobs", status_code=303)

    @app.get("/api/jobs", dependencies=read)
    def api_jobs():
        return {"jobs": data.job_rows()}

    @app.get("/api/jobs/{name}", dependencies=read)
    def api_job(name: str, run: str | None = None):
        try:
            return data.job_detail(name, run)
        except data.NotFound as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get("/api/jobs/{name}/live", dependencies=read)
    def api_live(name: str, run: str, task: str | None = None, lines: Annotated[int, Query(ge=1, le=5000)] = data.LOG_LINES):
        """What the detail page refreshes while a run is active: its state, tasks and log tail."""
        runs, _ = data.airflow_runs({name})
        found = next((r for r in runs.get(name, []) if r["dag_run_id"] == run), None)
        if found is None:
            raise HTTPException(404, f"job {name!r} has no run {run!r}")
        try:
            log = data.log_tail(found["dag_id"], run, task, lines)
        except data.NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        return {"state": found["state"], "tasks": data.task_instances(found["dag_id"], run), "log": log,
                "duration_s": data.duration_seconds(found["start"], found["end"], found["state"])}

    @app.get("/api/jobs/{name}/monitor", dependencies=read)
    def api_monitor(request: Request, name: str, run: str):
        """The monitoring charts (查看监控) of one run: loss, learning rate, tokens/s by step; CPU, memory,
        GPU utilisation and GPU memory per node over time; from the MLflow run's metric histories."""
        try:
            return data.monitor(name, run, _lang(request))
        except data.NotFound as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get("/jobs", dependencies=read, response_class=HTMLResponse)
    def jobs_page(request: Request):
        return templates.render("jobs.html", lang=_lang(request), base=_base(request), jobs=data.job_rows())

    @app.get("/jobs/{name}", dependencies=read, response_class=HTMLResponse)
    def job_page(request: Request, name: str, run: str | None = None):
        try:
            detail = data.job_detail(name, run)
        except data.NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        return templates.render("job.html", lang=_lang(request), base=_base(request), job=detail)

    @app.get("/jobs/{name}/curves.png", dependencies=read)
    def curves(name: str, run: str):
        try:
            png = data.curves_png(name, run)
        except data.NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    # "Try it": one prompt to the job's registered model. It needs POST on the DAG runs, what triggering
    # a run needs, not just reading them: each prompt starts a process that loads the model and spends
    # up to data.TRY_TIMEOUT_S of this machine's CPU or GPU, compute as a run spends it.
    @app.post("/api/jobs/{name}/try", dependencies=[_requires("POST")])
    async def try_it(request: Request, name: str):
        """JSON {prompt, max_new_tokens?} -> {answer, version, tokens, stopped, seconds}; errors: {detail: one line}."""
        _same_origin(request, "try it")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise HTTPException(400, 'try it: send a JSON object: {"prompt": "..."}')
        try:
            data.check_prompt(body.get("prompt"), body.get("max_new_tokens"))
            # the answer takes seconds: off the event loop (the lock in data refuses a second one)
            return await run_in_threadpool(data.try_prompt, name, body.get("prompt"), body.get("max_new_tokens"))
        except data.TryError as exc:
            headers = {"Retry-After": "10"} if exc.status == 429 else None
            raise HTTPException(exc.status, str(exc), headers=headers) from None

    @app.post("/jobs/{name}/delete", dependencies=[_requires("DELETE")], response_class=HTMLResponse)
    def delete(request: Request, name: str, confirm: Annotated[str, Form()] = "", force: Annotated[bool, Form()] = False):
        _same_origin(request)
        if confirm.strip() != name:
            raise HTTPException(400, i18n.text(_lang(request), "delete.confirm_mismatch", name=name, got=repr(confirm.strip())))
        code, out, err = data.delete(name, force=force)
        page = templates.render("deleted.html", lang=_lang(request), base=_base(request), name=name, ok=code == 0,
                                lines=[line for line in out.splitlines() if line.strip()],
                                error=i18n.delete_error(_lang(request), err.strip()))
        return HTMLResponse(page, status_code=200 if code == 0 else 409)

    return app
