"""OpenAI's Images API (the DALL-E 2 endpoints): what the `openai` SDK and Open WebUI's "openai" engine send.

`model` names a served model; "dall-e-2" (what clients send by default) and no model mean the server's current one.
`size` must be one the model makes (`64x64` for `shapes`, `256x256` for Karlo, multiples of 64 from 256 to 1024 a side
for Kandinsky 2.2); no size means the model's default (Kandinsky: 512x512). Seeds are
random and recorded in each PNG. URLs in `url` responses expire after the server's `--url-expiry`.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from dream_cli.serve.checks import (
    MAX_BASE64,
    MAX_IMAGES,
    OPENAI_MAX_PROMPT,
    BadInput,
    check_prompt,
    check_seed,
    check_size,
    pick_model,
    read_picture,
    settings_for,
    shown,
)
from dream_cli.serve.engine import Job
from dream_cli.serve.state import run_job, server

router = APIRouter()
MAX_UPLOAD = MAX_BASE64 * 3 // 4  # bytes of an uploaded picture
DALL_E = ("dall-e-2",)  # names clients send for "the image model": the server's current model


class GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # quality, style, ... (other models' fields) are accepted and ignored

    prompt: str = Field(max_length=OPENAI_MAX_PROMPT)
    model: str | None = Field(None, max_length=200)
    n: int | None = Field(1, ge=1, le=MAX_IMAGES)
    size: str | None = Field(None, max_length=32)
    response_format: Literal["url", "b64_json"] | None = "url"
    user: str | None = Field(None, max_length=256)


def _model(srv, name):
    return srv.models[srv.current] if name is None or name in DALL_E else pick_model(srv.models, name, srv.current)


def _size(model, size: str | None) -> tuple[int, int]:
    if size is None:
        return model.pipeline.default_size
    match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", size)
    if not match:
        raise BadInput("size", f"{shown(size)} is not WIDTHxHEIGHT; accepted: {model.pipeline.sizes()}")
    return check_size(model, int(match[1]), int(match[2]), field="size")


def _data(request: Request, results, response_format: str | None) -> dict:
    if response_format == "b64_json":
        data = [{"b64_json": base64.b64encode(r.png).decode()} for r in results]
    else:
        data = [{"url": f"{request.base_url}files/{r.id}.png"} for r in results]
    return {"created": int(time.time()), "data": data}


@router.post("/v1/images/generations")
async def generations(body: GenerationRequest, request: Request):
    srv = server(request)
    model = _model(srv, body.model)
    size = _size(model, body.size)
    prompt = check_prompt(body.prompt, limit=OPENAI_MAX_PROMPT)
    n = body.n or 1
    job = Job("txt2img", model, settings_for(model, size=size), prompt, n, check_seed(-1, n))
    return _data(request, await run_job(request, job), body.response_format)


@router.post("/v1/images/variations")
async def variations(request: Request, image: Annotated[UploadFile, File()], model: Annotated[str | None, Form(max_length=200)] = None,
                     n: Annotated[int | None, Form(ge=1, le=MAX_IMAGES)] = 1, size: Annotated[str | None, Form(max_length=32)] = None,
                     response_format: Annotated[Literal["url", "b64_json"] | None, Form()] = "url",
                     user: Annotated[str | None, Form(max_length=256)] = None):
    srv = server(request)
    served = _model(srv, model)
    size = _size(served, size)
    raw = await image.read(MAX_UPLOAD + 1)
    if len(raw) > MAX_UPLOAD:
        raise BadInput("image", f"more than {MAX_UPLOAD} bytes; accepted: a picture of at most {MAX_UPLOAD} bytes")
    async with srv.decoding:
        picture = await asyncio.to_thread(read_picture, raw, "image")
    n = n or 1
    job = Job("variations", served, settings_for(served, size=size), "", n, check_seed(-1, n), picture=picture)
    return _data(request, await run_job(request, job), response_format)
