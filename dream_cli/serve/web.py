"""The web page at `/` (static files shipped in the package, no build step) and the small API it calls.

`/dream/v1/txt2img` takes A1111's txt2img fields plus `model`; `/dream/v1/variations` varies a result of this server
by its id; `/dream/v1/progress/{task_id}` tells a request's place in the queue or its stages and a preview;
`/dream/v1/gallery` lists this server's results with their settings; `/files/{id}.png` serves a result until it expires.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response
from pydantic import Field

from dream_cli.serve.a1111 import Txt2ImgRequest, make_job, preview_png
from dream_cli.serve.checks import BadInput, pick_model, read_picture
from dream_cli.serve.results import Result
from dream_cli.serve.state import PAGE_FILES, STATIC, run_job, server

router = APIRouter()
MEDIA = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


class PageRequest(Txt2ImgRequest):
    model: str | None = Field(None, max_length=200)


class VariationRequest(PageRequest):
    source: str = Field(max_length=64)  # the id of a result of this server


def item(r: Result) -> dict:
    """A result as the gallery shows it: the image's URL and the settings it was made with."""
    info = r.info
    return {"id": r.id, "url": f"/files/{r.id}.png", "model": r.model, "prompt": r.prompt, "negative_prompt": info.get("negative_prompt"),
            "seed": info["seed"], "kind": info.get("kind"), "width": info["size"][0], "height": info["size"][1],
            "steps": info["steps"], "cfg_scale": info["cond_scale"], "prior_steps": info.get("prior_steps"),
            "prior_cfg_scale": info.get("prior_cond_scale"), "sampler": info["sampler"], "parameters": r.parameters,
            "created": r.created, "expires": r.expires}


@router.get("/")
async def page():
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/static/{name}")
async def static(name: str):
    if name not in PAGE_FILES:
        raise HTTPException(404, f"no page file {name[:60]!r}")
    path = STATIC / name
    return FileResponse(path, media_type=MEDIA[path.suffix])


@router.get("/files/{result_id}.png")
async def result_file(result_id: str, request: Request):
    result = server(request).store.get(result_id)
    if result is None:
        raise HTTPException(404, "no such image here (image URLs expire)")
    return Response(result.png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/dream/v1/models")
async def models(request: Request):
    srv = server(request)
    out = []
    for m in srv.models.values():
        s = m.defaults
        out.append({"name": m.name, "size": m.size, "current": m.name == srv.current, "stages": [n for n, _ in m.pipeline.stages(s)],
                    "defaults": {"steps": list(s.steps), "cfg_scale": list(s.cond_scale), "prior_steps": s.prior_steps,
                                 "prior_cfg_scale": s.prior_cond_scale, "sampler": s.sampler}})
    return out


def _with_model(body: PageRequest) -> PageRequest:
    if body.model:
        body.override_settings = {**(body.override_settings or {}), "sd_model_checkpoint": body.model}
    return body


@router.post("/dream/v1/txt2img")
async def page_txt2img(body: PageRequest, request: Request):
    srv = server(request)
    body = _with_model(body)
    job = make_job(srv, body, pick_model(srv.models, body.model, srv.current))
    return {"results": [item(r) for r in await run_job(request, job)]}


@router.post("/dream/v1/variations")
async def page_variations(body: VariationRequest, request: Request):
    srv = server(request)
    source = srv.store.get(body.source)
    if source is None:
        raise BadInput("source", "is not a result of this server (or it expired)")
    body = _with_model(body)
    job = make_job(srv, body, pick_model(srv.models, body.model or source.model, srv.current), kind="variations")
    job.picture = await asyncio.to_thread(read_picture, source.png, "source")
    return {"results": [item(r) for r in await run_job(request, job)]}


@router.get("/dream/v1/progress/{task_id}")
async def task_progress(task_id: str, request: Request):
    """queued (with its place), running (stages with steps done, a preview), or unknown (finished or never seen)."""
    engine = server(request).engine
    job = engine.find(task_id)
    if job is None:
        return {"state": "unknown"}
    position = engine.position(job)
    if position is None or position > 0:
        return {"state": "queued", "position": position}
    preview = engine.preview
    image = None if preview is None else "data:image/png;base64," + await asyncio.to_thread(preview_png, preview)
    return {"state": "running", "stages": [{"name": n, "done": d, "steps": t} for n, d, t in job.stages], "preview": image}


@router.get("/dream/v1/gallery")
async def gallery(request: Request):
    return {"results": [item(r) for r in server(request).store.recent()]}


__all__ = ["router"]
