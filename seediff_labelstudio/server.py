"""The HTTP contract Label Studio 1.23 speaks to ML backends (v2 protocol), on FastAPI + uvicorn.

``GET /health`` and ``GET /`` (no auth: Label Studio probes them with a 1 s timeout), ``POST /setup``,
``POST /predict``, ``POST /webhook``, ``GET /metrics``; HTTP basic auth on all but the health probes when
``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` are set. Requests are validated by pydantic (malformed JSON → 422,
never a 500); the OpenAPI spec at ``/openapi.json`` describes them (for clients and schema fuzzers).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import logging
import re
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .learn import Learner, webhook_responses
from .limits import BoundedLRU, TooManyValues, parse_json
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


_AUTH = {401: {"model": ErrorBody, "description": "basic auth missing or wrong (when BASIC_AUTH_USER is set)"}}
_MALFORMED = {422: {"model": MalformedBody, "description": "malformed request"}}
_NOT_LOADED = {503: {"model": ErrorBody, "description": "the model did not load (the reason is in the detail)"}}
_TOO_BIG = {413: {"model": ErrorBody, "description": "body over SEEDIFF_MAX_BODY_BYTES or tasks over SEEDIFF_MAX_TASKS"}}
_BAD_CONFIG = {400: {"model": ErrorBody, "description": "no or unsupported labeling config"}}


@dataclasses.dataclass(frozen=True)
class ProjectState:
    """What /setup leaves for a project: its labeling config and the token Label Studio sent (if accepted)."""

    config: str | None = None
    token: str | None = dataclasses.field(default=None, repr=False)


# A body's byte cap per route kind (/setup: the config cap plus room for the other fields), and its settings.
_BODY_CAPS = {SetupRequest: lambda s: min(s.max_body_bytes, s.max_config_bytes + 64 * 1024),
              PredictRequest: lambda s: s.max_body_bytes}
_BODY_CAP_NAMES = {SetupRequest: "SEEDIFF_MAX_CONFIG_BYTES + 64 KiB", PredictRequest: "SEEDIFF_MAX_BODY_BYTES"}


def _body_spec(model: type[BaseModel]) -> dict:
    """The OpenAPI requestBody of a route that parses its JSON body itself (bounded: ``parse`` in create_app)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def create_app(settings: Settings, model: SeeDiffModel | None = None) -> FastAPI:
    """The app around an already-loaded model (load it before serving: /setup must answer within 3 s)."""
    model = model or SeeDiffModel(settings)
    app = FastAPI(title="seediff Label Studio ML backend", version="0.1.0",
                  description="SeeDiff polygon/brush proposals from Stable Diffusion attention.")
    app.state.model = model
    # project → ProjectState (config; access_token from /setup, used if LABEL_STUDIO_API_KEY is unset), bounded
    app.state.projects = BoundedLRU(settings.max_projects, settings.project_state_bytes)
    plans = BoundedLRU(256, 16 * 2**20)  # config digest → its checked LabelPlan (no config text kept)
    parser = ThreadPoolExecutor(1, thread_name_prefix="seediff-config")  # configs, tokens: off the loop, one at a time
    basic = HTTPBasic(auto_error=False)
    body_cap = settings.max_body_bytes
    setup_cap = _BODY_CAPS[SetupRequest](settings)

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
        kind = SetupRequest if request.url.path == "/setup" else PredictRequest
        if declared and declared.isdigit() and int(declared) > _BODY_CAPS[kind](settings):
            return JSONResponse({"detail": f"request body over {_BODY_CAPS[kind](settings)} bytes "
                                           f"({_BODY_CAP_NAMES[kind]})"}, status_code=413)
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
        reason = _without_paths(model.error or "model not loaded")  # unauthenticated: no filesystem layout
        return {"status": "ERROR", "model_class": MODEL_CLASS, "reason": reason}, 503

    async def parse(request: Request, kind: type[BaseModel]) -> Any:
        """The request's JSON body as ``kind``: bytes capped as read (the route's max_body_size, chunked or not),
        values capped before parsing, and malformed input a 422 as FastAPI would answer it."""
        try:
            body = await request.body()
        except StarletteHTTPException as exc:  # the route's max_body_size, counted on the bytes read
            if exc.status_code != 413:
                raise
            raise HTTPException(413, f"request body over {_BODY_CAPS[kind](settings)} bytes "
                                     f"({_BODY_CAP_NAMES[kind]})") from None
        try:
            data = parse_json(body, settings.max_json_values)
        except TooManyValues as exc:
            raise HTTPException(413, f"{exc} (SEEDIFF_MAX_JSON_VALUES)") from None
        except ValueError as exc:
            raise RequestValidationError([{"loc": ("body",), "msg": f"JSON decode error: {exc}"}]) from None
        tasks = data.get("tasks") if isinstance(data, dict) else None
        if kind is PredictRequest and isinstance(tasks, list) and len(tasks) > settings.max_tasks_per_request:
            raise HTTPException(413, f"{len(tasks)} tasks in one request; the limit is "
                                     f"{settings.max_tasks_per_request} (SEEDIFF_MAX_TASKS)")
        try:
            return kind.model_validate(data)
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors()]) from None

    async def checked(config: str, endpoint: str, project: str):
        """The config's label plan, checked off the event loop (a large one takes seconds to parse), once per
        text; an unsupported one is refused with a reason logged at WARNING."""
        size = len(config.encode("utf-8", "surrogatepass"))
        if size > settings.max_config_bytes:
            raise HTTPException(413, f"the labeling config is {size} bytes, over the {settings.max_config_bytes} "
                                     "allowed (SEEDIFF_MAX_CONFIG_BYTES)")
        digest = hashlib.sha256(config.encode("utf-8", "surrogatepass")).digest()
        plan = plans.get(digest)
        if plan is not None:
            return plan
        try:
            plan = await asyncio.get_running_loop().run_in_executor(parser, model.check_config, config)
        except Exception as exc:
            raise _refused(endpoint, project, f"unsupported labeling config: {exc}") from None
        plans.put(digest, plan)
        return plan

    async def accepted_token(project: str, token: str) -> bool:
        """Whether /setup may store ``token`` for ``project``: the caller passed basic auth (configured), or
        Label Studio itself accepts the token for that project."""
        if settings.basic_auth_user:
            return True
        return await asyncio.get_running_loop().run_in_executor(
            parser, model.fetcher.token_opens_project, token, project)

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

    @app.post("/setup", dependencies=[Depends(auth)], max_body_size=setup_cap, openapi_extra=_body_spec(SetupRequest),
              responses={200: {"model": SetupBody}, **_BAD_CONFIG, **_AUTH, **_TOO_BIG, **_MALFORMED, **_NOT_LOADED})
    async def setup(request: Request):
        req = await parse(request, SetupRequest)
        project = _project_id(req.project)
        if not req.schema_:
            raise _refused("/setup", project, "setup needs the project's labeling config in 'schema'")
        plan = await checked(req.schema_, "/setup", project)
        log.info("/setup project %s: labels %s on <Image name=%r>, answered with %s control(s)", project or "?",
                 plan.words, plan.to_name, settings.control)
        if req.project is not None:
            token = (app.state.projects.get(project) or ProjectState()).token
            offered = req.access_token if not settings.ls_api_key else None
            if offered and offered != token:
                if await accepted_token(project, offered):
                    token = offered
                else:
                    log.warning("/setup for project %s: token not stored (Label Studio did not confirm it for that "
                                "project); the previous one, if any, is kept", project)
            app.state.projects.put(project, ProjectState(req.schema_, token))
        if not model.ready:
            raise HTTPException(503, f"model not loaded: {model.error}")
        return {"model_version": model.version_for(_project_id(req.project))}

    @app.post("/predict", response_model=PredictResponse, dependencies=[Depends(auth)], max_body_size=body_cap,
              openapi_extra=_body_spec(PredictRequest),
              responses={**_BAD_CONFIG, **_AUTH, **_TOO_BIG, **_MALFORMED, **_NOT_LOADED})
    async def predict(request: Request):
        req = await parse(request, PredictRequest)
        if not model.ready:
            raise HTTPException(503, f"model not loaded: {model.error}")
        arrived = time.monotonic()
        project = _project_id(req.project)
        state = app.state.projects.get(project) or ProjectState()
        config = req.label_config or state.config
        if not config:
            raise _refused("/predict", project, "predict needs 'label_config' (or a /setup for this project first)")
        await checked(config, "/predict", project)
        context = (req.params or {}).get("context") if isinstance(req.params, dict) else None
        results = await run_in_threadpool(model.predict, req.tasks, config, context, state.token,
                                          arrived + settings.predict_budget, project)
        model.count(requests=1, request_s=time.monotonic() - arrived)
        return {"results": results}

    # Any JSON body is acknowledged (Label Studio's events vary by version); declared so fuzzers send one.
    @app.post("/webhook", status_code=200, dependencies=[Depends(auth)], max_body_size=body_cap,
              responses={200: {"model": WebhookBody}, 400: {"model": ErrorBody, "description": "body is not JSON"},
                         **webhook_responses(WebhookBody, ErrorBody), **_AUTH, **_TOO_BIG},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}})
    async def webhook(request: Request):
        try:
            body = parse_json(await request.body(), settings.max_json_values)
        except TooManyValues as exc:
            raise HTTPException(413, f"{exc} (SEEDIFF_MAX_JSON_VALUES)") from None
        except ValueError:
            raise HTTPException(400, "webhook body must be JSON") from None
        model.count(webhooks=1)
        code, answer = await run_in_threadpool(learner.handle, body, settings.predict_budget)
        return JSONResponse(answer, status_code=code)

    learner = Learner.attach(app, settings, model, [Depends(auth)], {**_AUTH, **_MALFORMED}, ErrorBody)  # /calibration

    @app.get("/metrics", dependencies=[Depends(auth)],
             responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}, **_AUTH})
    async def metrics():
        return {"model_version": model.model_version if model.ready else None, **model.metrics_snapshot()}

    return app


# Answered without credentials: Label Studio's health probes (1 s, no auth) and the API description.
_PUBLIC_PATHS = frozenset({"/health", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def _refused(endpoint: str, project: str, reason: str) -> HTTPException:
    """A 400 for a request the backend cannot serve, logged at WARNING: Label Studio shows only a generic
    "doesn't look like a valid ML backend", so the backend's log is where the user finds why."""
    log.warning("%s project %s refused: %s", endpoint, project or "?", reason)
    return HTTPException(400, reason)


def _unauthorized() -> JSONResponse:
    return JSONResponse({"detail": "authentication required"}, status_code=401, headers={"WWW-Authenticate": "Basic"})


_QUOTED_PATH = re.compile(r"""(['"])(?:~|[A-Za-z]:)?[\\/][^'"]*\1""")  # '/srv/my models/x', "C:\x"
_PATH = re.compile(r"(?<![\w.~:/\\-])(?:~|[A-Za-z]:)?[\\/][^\s'\",;)]*")  # /srv/x, ~/x, C:\x (not URLs)


def _without_paths(text: str) -> str:
    """``text`` with filesystem paths replaced by '<path>' (for answers to unauthenticated callers)."""
    return _PATH.sub("<path>", _QUOTED_PATH.sub(r"\1<path>\1", text))


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
