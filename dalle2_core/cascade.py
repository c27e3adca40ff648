"""One cascade loop for every model family: stages of diffusion that each make a larger image than the last.

A family turns its networks into `Stage` records (what to call, with which conditions, on which diffusion, in
which space) and `sample_cascade` runs them in order: per-stage settings, the noise draw, guidance, start
pictures (SDEdit, or inpainting: RePaint on any network, or a network trained for inpainting), kept pixels, the
finite check and the hand-over of each stage's image to the next. unCLIP's decoder (Ramesh et al. 2022 sec. 2.1),
Karlo's 64 px decoder with its 256 px super-resolution pair and Kandinsky 2.2's latent U-Net with its MoVQ are all
lists of stages. The diffusion math is `dalle2_core.diffusion`; this module imports no network.

Between stages an image is a (b, c, h, w) tensor in [-1, 1] pixels: a stage's output decoded by its codec and
clamped. A stage's size is one side (square) or (height, width). The cascade returns the last image in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F

from dalle2_core.diffusion import (
    GaussianDiffusion,
    StageEdit,
    check_picture,
    classifier_free_guidance,
    redraws_nothing,
    sample_stage,
)
from dalle2_core.diffusion.gaussian import DenoiseFn
from dalle2_core.diffusion.repaint import check_inpaint_sampler
from dalle2_core.diffusion.spacing import steps_for
from dalle2_core.errors import SettingError, check_finite
from dalle2_core.helpers import cast_tuple, default, exists, normalize_neg_one_to_one, randn, resize, unnormalize_zero_to_one

Generator = torch.Generator | Sequence[torch.Generator] | None
Size = int | tuple[int, int]  # one side of a square, or (height, width)
# on_step(position, i, total, x): after step i (0-based) of `total` in stage `position` of the list run
CascadeOnStep = Callable[[int, int, int, torch.Tensor], "torch.Tensor | None"]


def per_stage(values, n: int, setting: str) -> tuple:
    """One value per stage from a scalar or a sequence of 1 or n values."""
    values = cast_tuple(values)
    if len(values) == 1:
        return values * n
    if len(values) != n:
        shown = ",".join(map(str, values))
        raise SettingError(setting, f"{shown} has {len(values)} values but the model has {n} decoder stage(s); give 1 or {n}")
    return values


class Codec(Protocol):
    """The autoencoder of a latent stage: [-1, 1] pixels <-> what the stage diffuses."""

    def encode(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


def hw(size: Size) -> tuple[int, int]:
    """(height, width) of a `Size`."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_picture(images: torch.Tensor, size: Size) -> torch.Tensor:
    """A [0, 1] picture at a stage's size: antialiased bicubic, clamped (the default `Stage.resize`)."""
    return images if images.shape[-2:] == hw(size) else resize(images, hw(size)).clamp(0.0, 1.0)


def _nearest_mask(mask: torch.Tensor, size: Size) -> torch.Tensor:
    """(b, 1, h, w) bool at `size`, nearest neighbour."""
    if mask.shape[-2:] == hw(size):
        return mask
    return F.interpolate(mask.float(), size=hw(size), mode="nearest") > 0.5


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One diffusion stage of a cascade, as a family builds it for one sampling run.

    `network(x, t, **conditions)` is called with the stage's conditions: `cond` (the conditional branch),
    `uncond` (guidance's unconditional branch with the same keys; None = the network's learned null, chosen
    by a `cond_drop_mask` the guidance adds) and what `lowres(previous, generator)` derives from the previous
    stage's image (both branches). `encode(**batched conditions) -> keywords` runs once per run (conditioning that
    depends on neither x_t nor t). `final_network` takes the last model call (Karlo's `super_res_last`).

    Inpainting runs RePaint on `network` unless `inpaint_mask` is set: `network` is then a network trained for
    inpainting, called with two more keywords, `masked` (the picture in the stage's space, zero where it is
    re-drawn) and `mask` (b, 1, h, w, 1.0 = kept), and the kept region is put back after every step
    (`diffusion.blended_sample`); `inpaint_mask` turns the keep mask at the stage's latent size into the one the
    network sees (diffusers' Kandinsky 2.2 grows the re-drawn region by a latent pixel).
    """

    name: str  # progress and error messages name it
    network: Callable[..., torch.Tensor]
    diffusion: GaussianDiffusion  # the training schedule; settings respace it
    size: Size  # of the [-1, 1] image the stage outputs
    channels: int  # channels of what it diffuses
    latent_size: Size | None = None  # of what it diffuses; None: `size` (a pixel stage)
    dtype: torch.dtype = torch.float32
    device: torch.device | str = "cpu"
    codec: Codec | None = None  # None: the stage diffuses pixels
    cond: dict = field(default_factory=dict)
    uncond: dict | None = None
    guided: bool = True  # False: nothing conditions it, so guidance does not apply (its scale is ignored)
    guide_variance: bool = False  # mix the learned-variance channels too (DALLE2-pytorch 1.1.0)
    encode: Callable[..., dict] | None = None
    lowres: Callable[[torch.Tensor, Generator], dict] | None = None
    final_network: Callable[..., torch.Tensor] | None = None
    denoise_fn: DenoiseFn | None = None
    max_batch: int | None = None  # rows per network call (guidance's batched branches in chunks)
    default_steps: int | str | None = None
    default_spacing: str = "uniform"  # the spacing its scheduler uses (`diffusion.spacing`), when the settings name none
    spacing_offset: int = 0  # a "leading" spacing's offset (a scheduler's steps_offset)
    strength_rounding: str = "round"  # SDEdit's re-drawn steps from a strength (`diffusion.redrawn_steps`)
    inpaint_mask: Callable[[torch.Tensor], torch.Tensor] | None = None  # see above: `network` is an inpainting network
    resize: Callable[[torch.Tensor, Size], torch.Tensor] = resize_picture  # a [0, 1] picture to this stage's size

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return (self.codec.decode(x) if exists(self.codec) else x).clamp(-1.0, 1.0)

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.codec.encode(pixels) if exists(self.codec) else pixels


@dataclass(frozen=True)
class StageSettings:
    """How one stage samples: guidance scale, respaced steps (a count, "ddimN", or timesteps), sampler, DDIM's eta."""

    cond_scale: float = 1.0
    steps: int | str | tuple[int, ...] | None = None  # None: the stage's default
    sampler: str = "ddpm"
    eta: float = 0.0
    spacing: str | None = None  # which timesteps `steps` visits (`choices.SPACINGS`); None: the stage's default


def stage_settings(n: int, *, cond_scale=1.0, steps=None, sampler="ddpm", eta: float = 0.0,
                   spacing: str | None = None) -> tuple[StageSettings, ...]:
    """`StageSettings` for n stages from one value, or a tuple or list of one per stage, of each setting.

    Steps None: each stage's default; a stage's explicit timesteps are one item, e.g. `steps=([991, 981, ...], 7)`.
    """
    pick = lambda v, name: per_stage(tuple(v) if isinstance(v, list) else v, n, name)  # noqa: E731
    counts = pick(steps, "steps")
    counts = tuple(tuple(c) if isinstance(c, list) else c for c in counts)
    return tuple(StageSettings(float(c), s, m, eta, spacing)
                 for c, s, m in zip(pick(cond_scale, "cond_scale"), counts, pick(sampler, "sampler")))


@dataclass(frozen=True)
class Picture:
    """What a run starts from besides noise, in [0, 1] pixels at any size: SDEdit's `init` redrawn at `strength`,
    or RePaint's `known` pixels kept where `keep` (b, H, W) is True."""

    init: torch.Tensor | None = None
    strength: float = 1.0
    known: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    resample_times: int = 5

    @classmethod
    def of(cls, init_image=None, strength: float = 1.0, inpaint_image=None, inpaint_mask=None, resample_times: int = 5) -> Picture:
        """Checked: SDEdit's image and strength, or RePaint's image with its bool mask (True = keep)."""
        init = check_picture(init_image, strength, inpaint_image, inpaint_mask)
        if exists(inpaint_image) and resample_times < 1:
            raise ValueError(f"inpaint_resample_times must be >= 1, got {resample_times}")
        return cls(init, strength, inpaint_image, inpaint_mask, resample_times)

    def for_stage(self, stage: Stage) -> _AtStage:
        """The picture at a stage's size and in its space ([-1, 1] pixels, or its codec's latents)."""
        if exists(self.known):
            known = normalize_neg_one_to_one(stage.resize(self.known, stage.size)).to(stage.dtype)
            keep = _nearest_mask(self.keep[:, None], stage.size)
            latent_keep = _nearest_mask(keep, default(stage.latent_size, stage.size))
            blend = exists(stage.inpaint_mask)
            latent_keep = stage.inpaint_mask(latent_keep) if blend else latent_keep
            return _AtStage(StageEdit(known=stage.from_pixels(known), keep=latent_keep, blend=blend), known, keep)
        if exists(self.init):
            init = normalize_neg_one_to_one(stage.resize(self.init, stage.size).to(stage.dtype))
            return _AtStage(StageEdit(init=stage.from_pixels(init), strength=self.strength, rounding=stage.strength_rounding), init)
        return _AtStage()

    def restore(self, images: torch.Tensor, stage: Stage) -> torch.Tensor:
        """[0, 1] images with the kept pixels exactly the picture's (at the last stage's size)."""
        if not exists(self.known):
            return images
        h, w = images.shape[-2:]
        size = h if h == w else (h, w)  # a square by its side, as every `Stage.resize` takes it
        keep = _nearest_mask(self.keep[:, None], size)
        return torch.where(keep, stage.resize(self.known, size).to(images.dtype), images)


NO_PICTURE = Picture()


class _AtStage(NamedTuple):
    """A `Picture` at one stage: the edit `sample_stage` takes, the pixels ([-1, 1]) and the keep mask (b, 1, s, s)."""

    edit: StageEdit | None = None
    pixels: torch.Tensor | None = None
    keep: torch.Tensor | None = None


def sample_cascade(stages: Sequence[Stage], settings: Sequence[StageSettings], *, batch_size: int, generator: Generator = None,
                   on_step: CascadeOnStep | None = None, picture: Picture = NO_PICTURE,
                   start: torch.Tensor | None = None) -> torch.Tensor:
    """Images (b, c, H, W) in [0, 1]: every stage in order, each from noise (or the picture) and the one before.

    `start` ([-1, 1] pixels) stands for the output of a stage before the first one (super-resolution alone).
    `generator`: one generator or one per image (`helpers.randn`). Raises `NonFiniteOutputError` naming a stage
    whose x_0 holds NaN or infinity, and `SettingError` for a sampler RePaint cannot run (before any stage runs).
    """
    if len(stages) != len(settings):
        raise ValueError(f"{len(stages)} stages need as many settings, got {len(settings)}")
    if exists(picture.known):
        for st, s in zip(stages, settings):  # before any stage runs
            if not exists(st.inpaint_mask):
                check_inpaint_sampler(s.sampler)
    if exists(picture.init) and all(_keeps_picture(st, s, picture.strength) for st, s in zip(stages, settings)):
        return stages[-1].resize(picture.init, stages[-1].size).to(stages[-1].dtype)  # nothing is re-drawn: the picture itself
    image = start.to(stages[0].dtype) if exists(start) else None  # a float32 picture for a half-precision model
    for position, (stage, s) in enumerate(zip(stages, settings)):
        hook = (lambda i, total, x, _p=position: on_step(_p, i, total, x)) if exists(on_step) else None
        image = _sample_stage(stage, s, image, batch_size, generator, hook, picture)
    return picture.restore(unnormalize_zero_to_one(image), stages[-1])


def _keeps_picture(stage: Stage, s: StageSettings, strength: float) -> bool:
    """Whether SDEdit at `strength` re-draws no step of this stage."""
    return redraws_nothing(stage.diffusion, default(s.steps, stage.default_steps), strength, stage.strength_rounding)


def _sample_stage(stage: Stage, s: StageSettings, previous: torch.Tensor | None, batch_size: int, generator: Generator,
                  on_step, picture: Picture) -> torch.Tensor:
    """One stage: [-1, 1] pixels (b, c, h, w)."""
    at = picture.for_stage(stage)
    extra = stage.lowres(previous, generator) if exists(stage.lowres) else {}
    if exists(at.edit) and at.edit.blend:  # an inpainting network sees the kept picture and the mask
        extra = {**extra, "masked": at.edit.known * at.edit.keep, "mask": at.edit.keep.to(at.edit.known.dtype)}
    cond = {**stage.cond, **extra}
    uncond = {**stage.uncond, **extra} if exists(stage.uncond) else None
    scale = s.cond_scale
    if not stage.guided:  # nothing conditions it: only the conditional branch runs, whatever the scale
        uncond, scale = cond, 1.0
    model = classifier_free_guidance(stage.network, scale, guide_variance=stage.guide_variance, encode=stage.encode,
                                     uncond=uncond, max_batch=stage.max_batch, **cond)
    steps = steps_for(stage.diffusion, default(s.steps, stage.default_steps), default(s.spacing, stage.default_spacing),
                      stage.spacing_offset)
    if exists(stage.final_network):
        model = _with_final(model, stage, steps, scale, cond, uncond)
    noise = randn((batch_size, stage.channels, *hw(default(stage.latent_size, stage.size))), generator=generator, device=stage.device,
                  dtype=stage.dtype)
    if exists(at.edit) and exists(at.edit.init) and redraws_nothing(stage.diffusion, steps, at.edit.strength, at.edit.rounding):
        return at.pixels  # no step of this stage is re-drawn: the picture itself (the noise is drawn all the same)
    x = sample_stage(model, stage.diffusion, noise, sampler=s.sampler, steps=steps, eta=s.eta if s.sampler == "ddim" else 0.0,
                     denoise_fn=stage.denoise_fn, generator=generator, on_step=on_step, edit=at.edit,
                     resample_times=picture.resample_times)
    check_finite(x, stage.name, scale)
    pixels = stage.to_pixels(x)
    return torch.where(at.keep, at.pixels, pixels) if exists(at.keep) else pixels


def _with_final(model, stage: Stage, steps, cond_scale: float, cond: dict, uncond: dict | None):
    """`model`, except that the call at the cleanest kept timestep (every sampler's last) goes to `final_network`."""
    last_t = int(stage.diffusion.respace(steps).timestep_map[0])
    final = classifier_free_guidance(stage.final_network, cond_scale, guide_variance=stage.guide_variance, encode=stage.encode,
                                     uncond=uncond, max_batch=stage.max_batch, **cond)

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (final if int(t[0]) == last_t else model)(x, t)

    return call


__all__ = [
    "Codec",
    "Picture",
    "Size",
    "Stage",
    "StageSettings",
    "hw",
    "per_stage",
    "resize_picture",
    "sample_cascade",
    "stage_settings",
]
