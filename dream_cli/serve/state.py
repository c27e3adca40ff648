"""What the routes share: the server's state (models, queue, results, credentials) and running one job for a request.

The API modules (`a1111`, `openai_api`, `web`) and the app (`app`) all build on this; nothing here imports them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from dream_cli.serve.engine import Engine, Job, failure_of
from dream_cli.serve.models import ServedModel
from dream_cli.serve.results import Result, ResultStore, keep

STATIC = Path(__file__).parent / "static"
PAGE_FILES = ("index.html", "app.js", "style.css")


@dataclass
class Auth:
    """--api-auth user:pass[,user:pass] (HTTP Basic, A1111's flag) and/or --api-key KEY (Bearer, what OpenAI clients send)."""

    users: dict[str, str] = field(default_factory=dict)
    key: str | None = None

    @property
    def required(self) -> bool:
        return bool(self.users) or self.key is not None

    def allows(self, header: str | None) -> bool:
        if not self.required:
            return True
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() == "bearer" and self.key is not None:
            return secrets.compare_digest(value.strip().encode(), self.key.encode())
        if scheme.lower() == "basic" and self.users:
            try:
                user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (binascii.Error, ValueError):
                return False
            expected = self.users.get(user)
            return expected is not None and secrets.compare_digest(password.encode(), expected.encode())
        return False


@dataclass
class Server:
    """What the routes share: the models, the queue, the results, the settings of this process."""

    models: dict[str, ServedModel]
    engine: Engine
    store: ResultStore
    outdir: Path | None = None
    auth: Auth = field(default_factory=Auth)
    current: str = ""  # the model requests get when they name none (A1111's sd_model_checkpoint)
    decoding: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))  # one picture decoded at a time

    def __post_init__(self):
        self.current = self.current or next(iter(self.models))


class ClientGone(Exception):
    """The client closed the connection before its images were ready (its job left the queue)."""


def server(request: Request) -> Server:
    return request.app.state.dream


async def run_job(request: Request, job: Job) -> list[Result]:
    """Queue `job`, wait for its images (results kept and written on the worker), leave the queue if the client goes."""
    srv, loop = server(request), asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def done(finished: Job) -> None:  # on the worker thread
        outcome: object = finished.error
        if outcome is None:
            try:
                outcome = keep(finished, srv.store, srv.outdir)
            except Exception as err:  # noqa: BLE001 - becomes this request's answer
                outcome = failure_of(err)
        try:
            loop.call_soon_threadsafe(_settle, future, outcome)
        except RuntimeError:  # the loop is closed: the server stopped while this job ran, nobody waits for it
            pass

    job.done = done
    srv.engine.submit(job)
    try:
        while not future.done():
            try:
                await asyncio.wait_for(asyncio.shield(future), timeout=0.25)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                if await request.is_disconnected():
                    raise ClientGone() from None
    finally:
        if not future.done():  # gone, or this request was cancelled (server shutting down)
            srv.engine.withdraw(job)
    outcome = future.result()
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _settle(future: asyncio.Future, outcome) -> None:
    if not future.done():
        future.set_result(outcome)


__all__ = ["PAGE_FILES", "STATIC", "Auth", "ClientGone", "Server", "run_job", "server"]
