"""The HTTP contract Label Studio 1.23 speaks to ML backends (v2 protocol), on FastAPI + uvicorn.

``GET /health`` and ``GET /`` (no auth: Label Studio probes them with a 1 s timeout), ``POST /setup``,
``POST /predict``, ``POST /webhook``, ``GET /metrics``; HTTP basic auth on all but the health probes when
``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` are set. Requests are validated by pydantic (malformed JSON → 422,
never a 500); the OpenAPI spec at ``/openapi.json`` describes them (for clients and schema fuzzers).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import logging
import secrets
import sys
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr

from .learn import Learner, check_calibration_env
from .model import SeeDiffModel
from .settings import Settings, SettingsError

__all__ = ["create_app", "main", "quiet_libraries"]

log = logging.getLogger("seediff_labelstudio")
MODEL_CLASS = "SeeDiff"


def _not_bool(value: Any) -> Any:
    """JSON true/false is not a project id (pydantic would read true as project 1)."""
    if isinstance(value, bool):
        raise ValueError("project must be a string or an integer")
    return value


ProjectId = Annotated[StrictStr | int | None, BeforeValidator(_not_bool)]  # '3.1700000000' from /setup, 3 from /predict

# A labeling config and a task as Label Studio sends them (the OpenAPI examples; fuzzers start from them).
EXAMPLE_CONFIG = ('<View><Image name="image" value="$image"/><PolygonLabels name="label" toName="image">'
                  '<Label value="Dog"/><Label value="Cat"/></PolygonLabels></View>')
EXAMPLE_TASK = {"id": 1, "data": {"image": "/data/local-files/?d=photos/dog.png"}}


class SetupRequest(BaseModel):
    """Label Studio's /setup body (extra keys allowed: newer Label Studio versions add some)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"project": "1.1700000000", "schema": EXAMPLE_CONFIG, "hostname": "http://localhost:8080",
         "access_token": "<token>", "extra_params": {}}]})
    project: ProjectId = None
    schema_: str | None = Field(default=None, alias="schema")
    hostname: str | None = None
    access_token: str | None = Field(default=None, repr=False)
    extra_params: Any = None


class PredictRequest(BaseModel):
    """Label Studio's /predict body."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"tasks": [EXAMPLE_TASK], "project": "1", "label_config": EXAMPLE_CONFIG, "params": {"context": None}}]})
    tasks: list[dict[str, Any]]
    project: ProjectId = None
    label_config: str | None = None
    params: dict[str, Any] | None = None


class PredictResponse(BaseModel):
    """One entry per task: a prediction, or [] (no prediction: Label Studio stores nothing, asks again later)."""

    results: list[dict[str, Any] | list[Any]]


# Response shapes, for the OpenAPI spec only (handlers return plain dicts / JSONResponse: nothing is filtered).
class ErrorBody(BaseModel):
    """A 4xx/5xx answer: one human-readable line."""

    detail: str


class MalformedBody(BaseModel):
    """422: the body is not JSON or does not have the documented shape (pydantic's errors, at most 20)."""

    detail: str
    errors: list[dict[str, Any]]


class HealthBody(BaseModel):
    """/health and /: UP with the model version, or ERROR (503) with the reason the model did not load."""

    status: str
    model_class: str
    model_version: str | None = None
    reason: str | None = None


class SetupBody(BaseModel):
    model_version: str


class WebhookBody(BaseModel):
    status: str
    action: Any = None
    model_config = ConfigDict(extra="allow")


_AUTH = {401: {"model": ErrorBody, "description": "basic auth missing or wrong (when BASIC_AUTH_USER is set)"}}
_MALFORMED = {422: {"model": MalformedBody, "description": "malformed request"}}
_NOT_LOADED = {503: {"model": ErrorBody, "description": "the model did not load (the reason is in the detail)"}}
_TOO_BIG = {413: {"model": ErrorBody, "description": "body over SEEDIFF_MAX_BODY_BYTES or tasks over SEEDIFF_MAX_TASKS"}}
_BAD_CONFIG = {400: {"model": ErrorBody, "description": "no or unsupported labeling config"}}


def create_app(settings: Settings, model: SeeDiffModel | None = None) -> FastAPI:
    """The app around an already-loaded model (load it before serving: /setup must answer within 3 s)."""
    model = model or SeeDiffModel(settings)
    app = FastAPI(title="seediff Label Studio ML backend", version="0.1.0",
                  description="SeeDiff polygon/brush proposals from Stable Diffusion attention.")
    app.state.model = model
    app.state.learner = learner = Learner.from_settings(settings, model)
    model.calibrations = learner.calibrations
    app.state.configs: dict[str, str] = {}
    app.state.tokens: dict[str, str] = {}  # project → access_token from /setup (used if LABEL_STUDIO_API_KEY unset)
    basic = HTTPBasic(auto_error=False)

    def authorized(header: str | None) -> bool:
        """The request's ``Authorization`` header carries the configured basic-auth pair (or none is configured)."""
        if not settings.basic_auth_user:
            return True
        scheme, _, param = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(param, validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        ok_user = secrets.compare_digest(user.encode(), settings.basic_auth_user.encode())
        ok_pass = secrets.compare_digest(password.encode(), (settings.basic_auth_pass or "").encode())
        return bool(sep) and ok_user and ok_pass

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        # Credentials first, before the body is read or parsed: an unauthenticated client learns nothing (no 413,
        # no 422 describing its body), it gets 401.
        if request.url.path not in _PUBLIC_PATHS and not authorized(request.headers.get("authorization")):
            return _unauthorized()
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            return JSONResponse({"detail": f"request body over {settings.max_body_bytes} bytes (SEEDIFF_MAX_BODY_BYTES)"},
                                status_code=413)
        return await call_next(request)

    async def auth(request: Request, _: HTTPBasicCredentials | None = Depends(basic)) -> None:
        # The middleware has already checked; this dependency declares the scheme in the OpenAPI spec and guards
        # a route should the middleware's public list ever change.
        if not authorized(request.headers.get("authorization")):
            raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Basic"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", [])), "msg": str(e.get("msg", ""))} for e in exc.errors()]
        return JSONResponse({"detail": "malformed request", "errors": errors[:20]}, status_code=422)

    def health_body() -> tuple[dict, int]:
        if model.ready:
            return {"status": "UP", "model_class": MODEL_CLASS, "model_version": model.model_version}, 200
        return {"status": "ERROR", "model_class": MODEL_CLASS, "reason": model.error or "model not loaded"}, 503

    # Health, index, setup and metrics are async: they answer on the event loop even while every worker
    # thread is busy with /predict (Label Studio gives /health 1 s and /setup 3 s).
    health_responses = {200: {"model": HealthBody}, 503: {"model": HealthBody, "description": "model not loaded"}}

    @app.get("/health", responses=health_responses)
    async def health():
        body, code = health_body()
        return JSONResponse(body, status_code=code)

    @app.get("/", responses=health_responses)
    async def index():
        body, code = health_body()
        return JSONResponse(body, status_code=code)

    @app.post("/setup", dependencies=[Depends(auth)],
              responses={200: {"model": SetupBody}, **_BAD_CONFIG, **_AUTH, **_TOO_BIG, **_MALFORMED, **_NOT_LOADED})
    async def setup(req: SetupRequest):
        if not req.schema_:
            raise HTTPException(400, "setup needs the project's labeling config in 'schema'")
        try:
            model.check_config(req.schema_)
        except Exception as exc:
            raise HTTPException(400, f"unsupported labeling config: {exc}") from None
        if req.project is not None:
            project = _project_id(req.project)
            app.state.configs[project] = req.schema_
            if req.access_token and not settings.ls_api_key:
                app.state.tokens[project] = req.access_token
        if not model.ready:
            raise HTTPException(503, f"model not loaded: {model.error}")
        return {"model_version": model.version_for(_project_id(req.project))}

    @app.post("/predict", response_model=PredictResponse, dependencies=[Depends(auth)],
              responses={**_BAD_CONFIG, **_AUTH, **_TOO_BIG, **_MALFORMED, **_NOT_LOADED})
    async def predict(req: PredictRequest):
        if not model.ready:
            raise HTTPException(503, f"model not loaded: {model.error}")
        if len(req.tasks) > settings.max_tasks_per_request:
            raise HTTPException(413, f"{len(req.tasks)} tasks in one request; the limit is "
                                     f"{settings.max_tasks_per_request} (SEEDIFF_MAX_TASKS)")
        arrived = time.monotonic()
        project = _project_id(req.project)
        config = req.label_config or app.state.configs.get(project)
        if not config:
            raise HTTPException(400, "predict needs 'label_config' (or a /setup for this project first)")
        try:
            model.check_config(config)
        except Exception as exc:
            raise HTTPException(400, f"unsupported labeling config: {exc}") from None
        context = (req.params or {}).get("context") if isinstance(req.params, dict) else None
        results = await run_in_threadpool(model.predict, req.tasks, config, context, app.state.tokens.get(project),
                                          arrived + settings.predict_budget, project)
        model.count(requests=1, request_s=time.monotonic() - arrived)
        return {"results": results}

    # Any JSON body is acknowledged (Label Studio's events vary by version); declared so fuzzers send one.
    # Annotation events and Start Training are verified against Label Studio's API and learnt from
    # (seediff_labelstudio.learn) when SEEDIFF_DATA_DIR and the Label Studio URL and key are set.
    @app.post("/webhook", status_code=200, dependencies=[Depends(auth)],
              responses={200: {"model": WebhookBody}, 400: {"model": ErrorBody, "description": "body is not JSON"},
                         202: {"model": WebhookBody, "description": "verified; learning from it in the background"},
                         404: {"model": ErrorBody, "description": "Label Studio's API does not have what it names"},
                         422: {"model": ErrorBody, "description": "malformed annotation or training event"},
                         502: {"model": ErrorBody, "description": "Label Studio's API could not be read"},
                         **_AUTH, **_TOO_BIG},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}})
    async def webhook(request: Request):
        try:
            body = await request.json()
        except Exception:
            raise HTTPException(400, "webhook body must be JSON") from None
        model.count(webhooks=1)
        code, answer = await run_in_threadpool(learner.handle, body, settings.predict_budget)
        return JSONResponse(answer, status_code=code)

    _NO_STORE = {404: {"model": ErrorBody, "description": "no calibration store (SEEDIFF_DATA_DIR unset)"}}
    _OBJECT = {200: {"content": {"application/json": {"schema": {"type": "object"}}}}}

    @app.get("/calibration/{project}", dependencies=[Depends(auth)],
             responses={**_OBJECT, **_NO_STORE, **_AUTH, **_MALFORMED})
    async def calibration(project: int):
        if learner.store is None:
            raise HTTPException(404, "no calibration store (set SEEDIFF_DATA_DIR)")
        return {**learner.store.summary(project), "model_version": model.version_for(project)}

    @app.delete("/calibration/{project}", dependencies=[Depends(auth)],
                responses={**_OBJECT, **_NO_STORE, **_AUTH, **_MALFORMED})
    async def reset_calibration(project: int):
        if learner.store is None:
            raise HTTPException(404, "no calibration store (set SEEDIFF_DATA_DIR)")
        learner.store.reset(project)
        return {"project": project, "status": "reset", "model_version": model.version_for(project)}

    @app.get("/metrics", dependencies=[Depends(auth)],
             responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}, **_AUTH})
    async def metrics():
        return {"model_version": model.model_version if model.ready else None, **model.metrics_snapshot()}

    return app


# Answered without credentials: Label Studio's health probes (1 s, no auth) and the API description.
_PUBLIC_PATHS = frozenset({"/health", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def _unauthorized() -> JSONResponse:
    return JSONResponse({"detail": "authentication required"}, status_code=401, headers={"WWW-Authenticate": "Basic"})


def _project_id(project: str | int | None) -> str:
    """Label Studio sends '<id>.<created timestamp>' to /setup and the bare id to /predict; key both by id."""
    return "" if project is None else str(project).split(".")[0]


def quiet_libraries() -> None:
    """Libraries log at WARNING and above only, whatever LOG_LEVEL is: at DEBUG httpcore prints response headers
    verbatim (a redirect's Location may carry a token, Label Studio's Set-Cookie a session), httpx every URL."""
    for noisy in ("httpx", "httpcore", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    """``seediff-labelstudio``: validate settings, load the model, then serve (port 9090 by default)."""
    ap = argparse.ArgumentParser(prog="seediff-labelstudio", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default=None, help="interface to bind (default: SEEDIFF_HOST or 0.0.0.0)")
    ap.add_argument("--port", type=int, default=None, help="port (default: SEEDIFF_PORT or 9090)")
    args = ap.parse_args(argv)
    try:
        settings = Settings.from_env()
        check_calibration_env(settings)
    except SettingsError as exc:
        print(f"seediff-labelstudio: bad setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    settings = dataclasses.replace(settings, host=args.host or settings.host, port=args.port or settings.port)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    log.info("starting with %r", settings)
    model = SeeDiffModel(settings)
    model.load()  # before the port opens: Label Studio's /health (1 s) and /setup (3 s) find it loaded
    import uvicorn

    uvicorn.run(create_app(settings, model), host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), access_log=False, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
