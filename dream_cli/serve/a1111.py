"""AUTOMATIC1111's web API, the subset image clients call (Open WebUI, SillyTavern, the `webuiapi` package).

Requests carry A1111's fields; those unCLIP has no use for (hires fix, restore_faces, tiling, subseeds, styles,
scripts, s_churn, eta, mask_blur, inpainting_fill, resize_mode, ...) are accepted and ignored, as A1111 does with
fields it does not know. `steps` and `cfg_scale` set the first decoder stage (the one that draws the picture, what
A1111's infotext reports); a list sets every stage. `prior_steps`, `prior_cfg_scale` and `prior_samples` are dream's
own additions.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from dream_cli.output import SAMPLER_NAMES
from dream_cli.sampling import MAX_SEED
from dream_cli.serve.checks import (
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_PRIOR_SAMPLES,
    MAX_PROMPT,
    MAX_STEPS,
    BadInput,
    check_prompt,
    check_seed,
    check_size,
    pick_model,
    read_edit,
    sampler_of,
    settings_for,
)
from dream_cli.serve.engine import Cancelled, Edit, Job
from dream_cli.serve.results import encode_png
from dream_cli.serve.state import run_job, server

router = APIRouter()

Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
Scale = Annotated[float, Field(ge=0, le=MAX_GUIDANCE, allow_inf_nan=False)]


class Txt2ImgRequest(BaseModel):
    """A1111's txt2img body, the fields unCLIP reads; any other field is accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field("", max_length=MAX_PROMPT)
    negative_prompt: str | None = Field("", max_length=MAX_PROMPT)
    seed: int = Field(-1, ge=-1, le=MAX_SEED)
    batch_size: int = Field(1, ge=1, le=MAX_IMAGES)
    n_iter: int = Field(1, ge=1, le=MAX_IMAGES)
    steps: Steps | list[Steps] | None = None
    cfg_scale: Scale | list[Scale] | None = None
    width: int | None = Field(None, ge=1, le=65536)
    height: int | None = Field(None, ge=1, le=65536)
    sampler_name: str | None = Field(None, max_length=100)
    sampler_index: str | None = Field(None, max_length=100)
    prior_steps: Steps | None = None
    prior_cfg_scale: Scale | None = None
    prior_samples: int | None = Field(None, ge=1, le=MAX_PRIOR_SAMPLES)
    override_settings: dict[str, Any] | None = None
    send_images: bool = True
    force_task_id: str | None = Field(None, max_length=128)


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] = Field(min_length=1, max_length=1)
    denoising_strength: float = Field(0.75, ge=0, le=1, allow_inf_nan=False)
    mask: str | None = None
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    include_init_images: bool = False


def requested_model(srv, body: Txt2ImgRequest):
    return pick_model(srv.models, (body.override_settings or {}).get("sd_model_checkpoint"), srv.current,
                      field="override_settings.sd_model_checkpoint")


def make_job(srv, body: Txt2ImgRequest, model, kind: str = "txt2img", inpainting: bool = False) -> Job:
    """The job of an A1111 request (also the web page's), every field but the pictures checked."""
    size = check_size(model, body.width, body.height)
    prompt = check_prompt(body.prompt, required=kind == "txt2img")
    n = body.batch_size * body.n_iter
    if n > MAX_IMAGES:
        raise BadInput("batch_size", f"batch_size x n_iter = {n} images; accepted: at most {MAX_IMAGES}")
    settings = settings_for(model, steps=body.steps, cfg_scale=body.cfg_scale, prior_steps=body.prior_steps,
                            prior_cfg_scale=body.prior_cfg_scale, prior_samples=body.prior_samples,
                            sampler=sampler_of(body.sampler_name or body.sampler_index),
                            inpainting=inpainting, size=size)
    return Job(kind, model, settings, prompt, n, check_seed(body.seed, n), negative_prompt=body.negative_prompt or None,
               task_id=body.force_task_id)


def info_text(job: Job, results, interrupted: bool = False) -> str:
    """A1111's `info`: a JSON string describing the images (seeds, infotexts, the model), as its processed.js() does."""
    s, model = job.settings, job.model
    seeds = [job.seed + i for i in range(job.n)]
    info = {
        "prompt": job.prompt, "all_prompts": [job.prompt] * job.n, "negative_prompt": job.negative_prompt or "",
        "all_negative_prompts": [job.negative_prompt or ""] * job.n, "seed": job.seed, "all_seeds": seeds,
        "subseed": -1, "all_subseeds": [-1] * job.n, "subseed_strength": 0, "width": s.size[0], "height": s.size[1],
        "sampler_name": SAMPLER_NAMES.get(s.sampler, s.sampler), "cfg_scale": s.cond_scale[0], "steps": s.steps[0],
        "batch_size": job.n, "restore_faces": False, "face_restoration_model": None, "sd_model_name": model.name,
        "sd_model_hash": model.short_hash, "sd_vae_name": None, "sd_vae_hash": None, "seed_resize_from_w": -1,
        "seed_resize_from_h": -1, "denoising_strength": job.edit.strength if job.edit is not None else None,
        "extra_generation_params": {"Decoder steps": list(s.steps), "Decoder CFG scale": list(s.cond_scale),
                                    "Prior steps": s.prior_steps, "Prior CFG scale": s.prior_cond_scale},
        "index_of_first_image": 0, "infotexts": [r.parameters for r in results], "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1, "is_using_inpainting_conditioning": False,
        "version": f"dream {results[0].info['dalle2_core_version']}" if results else "dream", "interrupted": interrupted,
    }
    return json.dumps(info)


async def answer(request: Request, job: Job, parameters: dict, send_images: bool) -> dict:
    try:
        results = await run_job(request, job)
    except Cancelled as err:
        if err.reason != "interrupted":
            raise
        return {"images": [], "parameters": parameters, "info": info_text(job, [], interrupted=True)}
    images = [base64.b64encode(r.png).decode() for r in results] if send_images else []
    return {"images": images, "parameters": parameters, "info": info_text(job, results)}


@router.post("/sdapi/v1/txt2img")
async def txt2img(body: Txt2ImgRequest, request: Request):
    srv = server(request)
    job = make_job(srv, body, requested_model(srv, body))
    return await answer(request, job, body.model_dump(), body.send_images)


@router.post("/sdapi/v1/img2img")
async def img2img(body: Img2ImgRequest, request: Request):
    srv = server(request)
    job = make_job(srv, body, requested_model(srv, body), kind="img2img", inpainting=bool(body.mask))
    async with srv.decoding:
        image, mask = await asyncio.to_thread(read_edit, job.model, body.init_images[0], body.mask, body.inpainting_mask_invert == 1,
                                                job.settings.size)
    # inpainting re-draws the masked region fully (RePaint): A1111's denoising_strength applies to img2img alone
    job.edit = Edit(image, mask, 1.0 if mask is not None else body.denoising_strength)
    parameters = body.model_dump(exclude=set() if body.include_init_images else {"init_images", "mask"})
    return await answer(request, job, parameters, body.send_images)


def preview_png(tensor) -> str:
    """The running stage's current x_t (in [-1, 1]) as a base64 PNG."""
    return base64.b64encode(encode_png((tensor.float().cpu() + 1) / 2, {})).decode()


@router.get("/sdapi/v1/progress")
async def progress(request: Request, skip_current_image: bool = False):
    engine = server(request).engine
    snap = engine.snapshot()
    running, stages = snap["running"], snap["stages"]
    state = {"skipped": False, "interrupted": engine.interrupted or snap["cancel"] == "interrupted", "stopping_generation": False,
             "job": running[0].kind if running else "", "job_count": len(running) + snap["queued"], "job_no": 0,
             "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "sampling_step": 0, "sampling_steps": 0}
    if not running or not stages:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    done, total = sum(st[1] for st in stages), sum(st[2] for st in stages)
    current = next((st for st in stages if st[1] < st[2]), stages[-1])
    state.update(sampling_step=current[1], sampling_steps=current[2])
    fraction = min(1.0, done / max(1, total))
    elapsed = time.monotonic() - engine.started_at
    eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
    preview = engine.preview
    image = None if skip_current_image or preview is None else await asyncio.to_thread(preview_png, preview)
    return {"progress": fraction, "eta_relative": eta, "state": state, "current_image": image,
            "textinfo": f"{current[0]}: step {current[1]}/{current[2]}"}


@router.post("/sdapi/v1/interrupt")
async def interrupt(request: Request):
    server(request).engine.interrupt()
    return {}


@router.get("/sdapi/v1/options")
async def get_options(request: Request):
    srv = server(request)
    model = srv.models[srv.current]
    return {"sd_model_checkpoint": model.name, "sd_checkpoint_hash": model.sha256, "samples_format": "png",
            "live_previews_enable": True, "show_progress_every_n_steps": 1}


@router.post("/sdapi/v1/options")
async def set_options(body: dict[str, Any], request: Request):
    """`sd_model_checkpoint` switches among the served models; A1111's other options are accepted and ignored."""
    srv = server(request)
    if "sd_model_checkpoint" in body:
        srv.current = pick_model(srv.models, body["sd_model_checkpoint"], srv.current, field="sd_model_checkpoint").name
    return None


@router.get("/sdapi/v1/sd-models")
async def sd_models(request: Request):
    return [{"title": m.name, "model_name": m.name, "hash": m.short_hash, "sha256": m.sha256, "filename": m.name, "config": None}
            for m in server(request).models.values()]


@router.get("/sdapi/v1/samplers")
async def samplers():
    return [{"name": title, "aliases": [name], "options": {}} for name, title in SAMPLER_NAMES.items()]


@router.get("/sdapi/v1/scripts")
async def scripts():
    return {"txt2img": [], "img2img": []}  # no A1111 scripts here (webuiapi asks when it connects)
