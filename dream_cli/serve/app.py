"""The ASGI application of `dream serve`: authentication, error bodies, the job round trip, and the three route sets.

Errors are answered in the caller's dialect: OpenAI's `{"error": {message, type, param, code}}` under `/v1/`,
FastAPI's `{"detail": [{loc, msg, type}]}` for bad input elsewhere (what A1111 answers, 422), and A1111's
`{"error", "detail", "body", "errors"}` for the rest. No response and no log line carries a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from dream_cli.errors import one_line
from dream_cli.serve.checks import ACCEPTED, MAX_BODY, OPENAI_ACCEPTED, BadInput
from dream_cli.serve.engine import Cancelled, JobFailed, QueueFull
from dream_cli.serve.state import Auth, ClientGone, Server, run_job, server

log = logging.getLogger("dream.serve")
UNION_TAGS = ("int", "float", "str", "bool", "list", "dict", "none")
# ---- error bodies ---------------------------------------------------------------------------------------


def _openai(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def error_response(request: Request, status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    """An error in the dialect of the API that was called (see the module docstring)."""
    if _openai(request):
        kind = {401: "invalid_request_error", 503: "server_error", 500: "server_error"}.get(status, "invalid_request_error")
        text = f"{param}: {message}" if param else message
        body = {"error": {"message": text, "type": kind, "param": param, "code": code}}
    elif status == 422 and param is not None:
        loc = ["body"] if param == "body" else ["body", *param.split(".")]
        body = {"detail": [{"loc": loc, "msg": message, "type": "value_error"}]}
    else:
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        body = {"error": phrase, "detail": message, "body": "", "errors": message}
    return JSONResponse(body, status_code=status, headers=headers)


def bad_input_status(request: Request) -> int:
    return 400 if _openai(request) else 422


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BadInput)
    async def bad_input(request: Request, err: BadInput):
        return error_response(request, bad_input_status(request), err.message, param=err.field)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {"loc": ("body",), "msg": "invalid request"}
        # field names and list indices; not the locations' parts pydantic adds for union members
        loc = [str(p) for p in first.get("loc", ()) if isinstance(p, int) or (p not in ("body", "query", "path")
                                                                              and re.fullmatch(r"[A-Za-z_]\w*", p) and p not in UNION_TAGS)]
        message = first.get("msg", "invalid")
        if first.get("type") == "json_invalid":
            loc, message = [], f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'decode error')})"
        accepted = {**ACCEPTED, **OPENAI_ACCEPTED} if _openai(request) else ACCEPTED
        if loc and loc[0] in accepted:
            message = f"{message}; accepted: {accepted[loc[0]]}"
        return error_response(request, bad_input_status(request), message, param=".".join(loc) or "body")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        if err.status_code == 400:  # a body FastAPI could not parse (JSON nested past Python's recursion limit, ...)
            return error_response(request, bad_input_status(request), f"{err.detail}; accepted: a JSON object", param="body")
        if err.status_code == 413:
            return too_large(request)
        return error_response(request, err.status_code, str(err.detail), headers=err.headers)

    @app.exception_handler(QueueFull)
    async def busy(request: Request, err: QueueFull):
        return error_response(request, 503, str(err), headers={"Retry-After": str(err.retry_after)})

    @app.exception_handler(JobFailed)
    async def failed(request: Request, err: JobFailed):
        headers = {"Retry-After": "5"} if err.status == 503 else None
        return error_response(request, err.status, str(err), headers=headers)

    @app.exception_handler(Cancelled)
    async def cancelled(request: Request, err: Cancelled):
        # OpenAI's SDK retries 409; this request was stopped on purpose, so it asks it not to
        return error_response(request, 409, "the request was interrupted before its images were finished", code="interrupted",
                              headers={"x-should-retry": "false"})

    @app.exception_handler(ClientGone)
    async def gone(request: Request, err: ClientGone):
        return Response(status_code=499)  # nobody reads it

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception):
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(err).__name__, one_line(err))
        return error_response(request, 500, f"internal error ({type(err).__name__})")


def too_large(request: Request) -> JSONResponse:
    return error_response(request, 413, f"the request body is larger than {MAX_BODY} bytes")


class Gate:
    """Before anything is read: credentials, and the body size a request declares (a body that streams past the
    limit is stopped by FastAPI's own limit). Every path but the expiring image URLs (and, with only an API key,
    the page's own files, which hold no data) needs credentials."""

    def __init__(self, app, auth: Auth):
        self.app, self.auth = app, auth

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            request = Request(scope)
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY:
                await too_large(request)(scope, receive, send)
                return
        if scope["type"] == "http" and self.auth.required and scope["method"] != "OPTIONS":  # CORS preflights carry none
            path = scope["path"]
            public = path.startswith("/files/") or (not self.auth.users and (path == "/" or path.startswith("/static/")))
            if not public and not self.auth.allows(request.headers.get("authorization")):
                challenge = 'Basic realm="dream"' if self.auth.users and not _openai(request) else "Bearer"
                message = "incorrect or missing credentials: give HTTP Basic (--api-auth) or a Bearer API key (--api-key)"
                response = error_response(request, 401, message, code="invalid_api_key", headers={"WWW-Authenticate": challenge})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class NoTracebacks:
    """The outermost ASGI layer: an error that escaped every handler (already answered with a 500) is one log line."""

    def __init__(self, app, inner: FastAPI):
        self.app, self.fastapi = app, inner
        self.state = inner.state  # the `Server`, as `app.state.dream`

    async def __call__(self, scope, receive, send):
        try:
            await self.app(scope, receive, send)
        except Exception as err:  # noqa: BLE001
            log.error("%s: %s", type(err).__name__, one_line(err))


def create_app(srv: Server, cors_origins: tuple[str, ...] = ()):
    """The ASGI application to serve: the routes inside FastAPI, wrapped (outermost first) in NoTracebacks, CORS
    when origins are named (so preflights and refusals get its headers), and the Gate (credentials, body size)."""
    from dream_cli.serve import a1111, openai_api, web

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        srv.engine.stop()  # answers what still waits; the worker ends after its current step
        await asyncio.to_thread(srv.engine.join, 10)

    app = FastAPI(title="dream", docs_url=None, redoc_url=None, openapi_url=None, max_body_size=MAX_BODY, lifespan=lifespan)
    app.state.dream = srv
    install_error_handlers(app)
    app.include_router(a1111.router)
    app.include_router(openai_api.router)
    app.include_router(web.router)
    outer = Gate(app, srv.auth)
    if cors_origins:
        outer = CORSMiddleware(outer, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                               allow_headers=["Authorization", "Content-Type"])
    return NoTracebacks(outer, app)


__all__ = ["Auth", "ClientGone", "NoTracebacks", "Server", "create_app", "error_response", "run_job", "server"]
