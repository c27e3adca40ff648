"""The seam every model family plugs into: one object that turns prompts (or images) into images.

A `Pipeline` owns a loaded model's whole path — prompts -> text encoder (once per batch) -> prior
-> decoder stages -> images in [0, 1] — and the sampling settings it resolves from the model's own
defaults. The shared methods here (`generate`, `variations`, `interpolate`) are written once, in
terms of five steps a family implements:

    encode_text(prompts)                          -> TextCondition   the text tower, once per batch
    sample_prior(text, settings, generator, ...)  -> (b, d)          image embeddings for the text
    embed_images(images)                          -> (b, d)          image embeddings of pictures
    decode(image_embed, text, settings, ...)      -> (b, c, H, W)    every decoder stage, [0, 1]
    stage_defaults()                              -> StageDefaults   step counts each stage allows

A family may condition its unconditional guidance branch differently (a learned null, the empty
prompt's encoding); that stays inside `sample_prior` / `decode`. Random draws take one generator or
one per image (`dalle2_core.helpers.randn`), so image i of a batch is the image of seed + i alone.
"""

from __future__ import annotations

import abc
import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dalle2_core.cascade import per_stage
from dalle2_core.checkpoint import ModelLoadError, SamplingSettings
from dalle2_core.choices import INPAINT_SAMPLERS
from dalle2_core.conditioning import Condition, TextCondition
from dalle2_core.diffusion.repaint import check_inpaint_sampler
from dalle2_core.diffusion.spacing import steps_for
from dalle2_core.errors import NonFiniteOutputError, SettingError, check_finite
from dalle2_core.helpers import default, exists
from dalle2_core.interpolation import mix_embeddings, slerp

# on_step(stage, i, total, x): after step i (0-based) of `total` in the named stage ("prior", "unet 1", ...)
OnStep = Callable[[str, int, int, torch.Tensor], None]
Generator = torch.Generator | Sequence[torch.Generator] | None
PRIOR_STAGE = "prior"


@dataclass(frozen=True)
class ImageEdit:
    """Start from a picture instead of noise: SDEdit (`strength` < 1) or RePaint inpainting (`mask`)."""

    image: torch.Tensor  # (1 | b, c, h, w) in [0, 1]
    strength: float = 1.0  # the fraction of every stage's schedule that is re-drawn; 0 keeps the image, 1 ignores it
    mask: torch.Tensor | None = None  # (1 | b, h, w) bool, True = regenerate; the rest is kept pixel for pixel


@dataclass(frozen=True)
class StageDefaults:
    """For the prior (None when the model has none) and each decoder stage: (default steps, training steps)."""

    prior: tuple[int, int] | None
    decoder: tuple[tuple[int, int], ...]


class Pipeline(nn.Module, abc.ABC):
    """Prompts or images to images for one loaded model (see the module docstring for the seam)."""

    family: str = ""
    defaults: SamplingSettings
    fast: SamplingSettings | None = None  # the model's settings for fewer network calls (`resolve(fast=True)`); None: it records none
    unit_embeddings: bool = True  # image embeddings on the unit sphere (unCLIP); False: raw projections whose norms matter
    folder: Path | None = None  # the model folder it was loaded from (on-demand components come from there)

    # ---- loading ------------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, *, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> Pipeline:
        """The pipeline of a model folder of this family: each component its family declares (`families.Family`) loaded
        with `checkpoint.load_component` on `device` in `dtype` and passed by name, with the folder's defaults."""
        from dalle2_core.checkpoint import load_component, read_index
        from dalle2_core.families import family

        folder, declared = Path(folder), family(cls.family)
        index = read_index(folder)
        missing = [c for c in declared.components if c not in index.components and c not in declared.optional]
        if missing:
            raise ModelLoadError(f"{folder} is a {cls.family} model without {', '.join(missing)}; it needs "
                                 f"{', '.join(c for c in declared.components if c not in declared.optional)}")
        parts = {c: load_component(folder / c, device=device, dtype=dtype).eval() for c in declared.components if c in index.components}
        pipeline = cls(**parts, defaults=index.defaults)
        pipeline.folder, pipeline.fast, pipeline._load_options = folder, index.fast, dict(device=device, dtype=dtype)
        return pipeline.eval()

    def on_demand(self, name: str) -> nn.Module | None:
        """A component the family loads on first use (`Family.on_demand`), from the folder the pipeline came from:
        None when the folder lacks it. It is registered as a submodule, so it follows `.to()` and offloading."""
        if name in self._modules:
            return self._modules[name]
        from dalle2_core.checkpoint import load_component

        if self.folder is None or not (self.folder / name).is_dir():
            return None
        options = getattr(self, "_load_options", {})
        module = load_component(self.folder / name, device=options.get("device"), dtype=options.get("dtype")).eval()
        if exists(self.offload_device):
            module.to("cpu")
        self.add_module(name, module)
        return module

    # ---- what a family implements ---------------------------------------------------------------

    @property
    @abc.abstractmethod
    def stage_names(self) -> tuple[str, ...]:
        """The decoder stages, lowest resolution first (progress and error messages name them)."""

    @property
    @abc.abstractmethod
    def has_prior(self) -> bool: ...

    @property
    @abc.abstractmethod
    def image_size(self) -> int:
        """Height and width of the images the last stage makes."""

    @property
    def unconditional(self) -> bool:
        """True when nothing conditions the images (no text, no image embedding)."""
        return False

    @property
    def default_size(self) -> tuple[int, int]:
        """(width, height) of the images a run makes when no size is asked for."""
        return self.image_size, self.image_size

    def sizes(self) -> str:
        """The image sizes the model makes, in words (what a refused size is told)."""
        return "{}x{}".format(*self.default_size)

    def check_size(self, size: Sequence[int] | None) -> tuple[int, int]:
        """(width, height) of the images: `size` when the model makes it (None: `default_size`); else a `SettingError`
        naming the size and `sizes()`. A cascade makes one size, its last stage's."""
        if size is None:
            return self.default_size
        width, height = size
        if not self.makes(width, height):
            raise SettingError("size", f"{width}x{height} is not a size this model makes; accepted: {self.sizes()}")
        return width, height

    def makes(self, width: int, height: int) -> bool:
        """Whether the model makes width × height images (`sizes()` says which it does)."""
        return (width, height) == self.default_size

    @property
    def repaints(self) -> bool:
        """Whether inpainting runs RePaint (on the samplers of `choices.INPAINT_SAMPLERS`); False: the model has a network
        trained for inpainting, which runs with any sampler."""
        return True

    @abc.abstractmethod
    def stage_defaults(self) -> StageDefaults: ...

    @abc.abstractmethod
    def encode_text(self, text: Sequence[str] | torch.Tensor) -> TextCondition: ...

    @abc.abstractmethod
    def sample_prior(self, text: TextCondition, settings: SamplingSettings, *, generator: Generator = None,
                     on_step: OnStep | None = None, negative: TextCondition | None = None) -> torch.Tensor:
        """Image embeddings (b, d); `negative` (a negative prompt's text) is guidance's unconditional branch."""

    @abc.abstractmethod
    def embed_images(self, images: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def decode(self, image_embed: torch.Tensor | None, text: TextCondition | None, settings: SamplingSettings, *,
               batch_size: int | None = None, generator: Generator = None, on_step: OnStep | None = None,
               edit: ImageEdit | None = None, negative: Condition | None = None) -> torch.Tensor:
        """Images (b, c, H, W) in [0, 1]; `text=None` on a text-conditioned decoder means its null text.

        `negative` (the negative prompt's image embedding and text) conditions guidance's unconditional branch.
        """

    def upscale(self, images: torch.Tensor, settings: SamplingSettings, *, prompts: Sequence[str] | None = None,
                generator: Generator = None, on_step: OnStep | None = None) -> torch.Tensor:
        """Only the super-resolution stages, on given [0, 1] images (b, c, h, w)."""
        raise ValueError(f"the {self.family} family has no separate super-resolution stages to run")

    # ---- settings ---------------------------------------------------------------------------------

    def resolve(self, settings: SamplingSettings | dict | None = None, *, inpainting: bool = False, fast: bool = False,
                **given) -> SamplingSettings:
        """Concrete settings: `given` (None = not given) over `settings` over the model's defaults (with `fast`, over the
        model's fast settings instead: `SettingError` "fast" when it records none).

        Steps and guidance become one value per decoder stage; every step count is checked against
        the training schedule of its stage; the size is one the model makes (`check_size`). `inpainting`: the
        settings are for an edit with a mask, so where the model inpaints by RePaint (`repaints`) the sampler must
        be one RePaint runs with (`choices.INPAINT_SAMPLERS`); a model default that is not becomes DDPM, a sampler
        asked for that is not is refused. Raises `SettingError` naming the field.
        """
        if fast and not exists(self.fast):
            raise SettingError("fast", f"this {self.family} model records no fast settings; give the sampler, steps and spacing instead")
        base = (self.fast if fast else self.defaults).to_dict()
        asked = dict(settings if isinstance(settings, dict) else settings.to_dict()) if exists(settings) else {}
        asked.update({k: v for k, v in given.items() if exists(v)})
        inpainting = inpainting and self.repaints
        if inpainting and "sampler" not in asked and base["sampler"] not in INPAINT_SAMPLERS:
            base["sampler"] = INPAINT_SAMPLERS[0]  # the model's default sampler cannot inpaint
        base.update(asked)
        if inpainting:
            check_inpaint_sampler(base["sampler"])
        stages = self.stage_defaults()
        n = len(stages.decoder)
        steps = per_stage(default(base["steps"], tuple(s for s, _ in stages.decoder)), n, "steps")
        for (_, total), count in zip(stages.decoder, steps):
            if count > total:
                raise SettingError("steps", f"{count} steps exceed a decoder stage's {total} training timesteps; accepted: 1..{total}")
        prior_steps = None
        if exists(stages.prior):
            prior_steps, total = default(base["prior_steps"], stages.prior[0]), stages.prior[1]
            if prior_steps > total:
                raise SettingError("prior_steps",
                                   f"{prior_steps} steps exceed the prior's {total} training timesteps; accepted: 1..{total}")
        cond_scale = per_stage(base["cond_scale"], n, "cond_scale")
        size = self.check_size(base.get("size"))
        try:
            return SamplingSettings.build(
                base,
                steps=tuple(int(s) for s in steps),
                cond_scale=tuple(float(v) for v in cond_scale),
                prior_cond_scale=float(base["prior_cond_scale"]),
                prior_steps=prior_steps,
                size=tuple(size),
            )
        except (TypeError, ValueError) as err:
            raise SettingError(_field_named(err), str(err)) from None

    def _stage_hook(self, on_step: OnStep | None):
        """A cascade's `on_step(stage_number, i, total, x)` with the stage named (as in `stage_names`)."""
        if on_step is None:
            return None
        names = self.stage_names
        return lambda stage_number, i, total, x: on_step(names[stage_number - 1], i, total, x)

    def prior_runs(self, *, text: bool, negative: bool) -> int:
        """How many times a batch samples the prior: once for the prompts (`text`), once more for negative prompts."""
        return int(text) + int(negative)

    def stages(self, settings: SamplingSettings) -> list[tuple[str, int]]:
        """(stage name, steps) in the order a text-to-image run goes through them."""
        prior = [(PRIOR_STAGE, settings.prior_steps)] if self.has_prior and not self.unconditional else []
        return prior + list(zip(self.stage_names, settings.steps))

    # ---- shared paths -----------------------------------------------------------------------------

    offload_device: torch.device | None = None

    @property
    def device(self) -> torch.device:
        """Where sampling runs (with offloading: the accelerator, while the networks wait on the CPU)."""
        return self.offload_device if exists(self.offload_device) else next(self.parameters()).device

    def offload(self, device: torch.device | str) -> Pipeline:
        """Keep every network on the CPU and move each to `device` only while its stage runs, so that the largest
        network (not the whole model) must fit the accelerator: Karlo in fp16 samples on an 8 GB GPU."""
        self.offload_device = torch.device(device)
        self.to("cpu")
        return self

    @contextlib.contextmanager
    def on_device(self, module: nn.Module):
        """`module` on the sampling device for the block (a no-op unless offloading)."""
        if not exists(self.offload_device) or module is None:
            yield
            return
        module.to(self.offload_device)
        try:
            yield
        finally:
            module.to("cpu")

    @torch.no_grad()
    def generate(self, prompts: str | Sequence[str] | torch.Tensor, settings: SamplingSettings | None = None, *,
                 generator: Generator = None, on_step: OnStep | None = None, edit: ImageEdit | None = None,
                 negative_prompts: Sequence[str] | None = None) -> torch.Tensor:
        """Images (b, c, H, W) in [0, 1] for prompts (or token ids): text encoded once, prior, then the decoder.

        `edit` starts the decoder from a picture (img2img or inpainting) with the prompts' embeddings.
        `negative_prompts` (one per prompt) are guidance's unconditional branch instead of the learned nulls:
        the prior is guided away from their text, the decoder from their prior embedding and text.
        """
        s = self.resolve(settings)
        text = [prompts] if isinstance(prompts, str) else prompts
        if self.unconditional:
            if negative_prompts:
                raise ValueError("this model is unconditional: a negative prompt has nothing to steer")
            return self.decode(None, None, s, batch_size=len(text), generator=generator, on_step=on_step, edit=edit)
        if not self.has_prior:
            raise ValueError("this model has no prior, so it cannot generate from text; give images to vary instead")
        cond, neg = self._encode_with_negatives(text, negative_prompts)
        image_embed, negative = self.sample_prior_with_negatives(cond, neg, s, generator=generator, on_step=on_step)
        return self.decode(image_embed, cond, s, generator=generator, on_step=on_step, edit=edit, negative=negative)

    def sample_prior_with_negatives(self, text: TextCondition, negative: TextCondition | None, settings: SamplingSettings, *,
                                    generator: Generator = None, on_step: OnStep | None = None) -> tuple[torch.Tensor, Condition | None]:
        """The prompts' image embeddings guided away from the negative prompts, and the decoder's unconditional branch
        for them (None without negative prompts): the negative prompts' own image embeddings with their text."""
        image_embed = self.sample_prior(text, settings, generator=generator, on_step=on_step, negative=negative)
        if negative is None:
            return image_embed, None
        return image_embed, self.negative_condition(negative, settings, generator=generator, on_step=on_step)

    def negative_condition(self, negative: TextCondition, settings: SamplingSettings, *, generator: Generator = None,
                           on_step: OnStep | None = None) -> Condition:
        """Guidance's unconditional branch for the decoder from negative prompts' text: their prior embedding and text."""
        return Condition(self.sample_prior(negative, settings, generator=generator, on_step=on_step), negative)

    def _encode_with_negatives(self, text, negative_prompts):
        """The prompts' and the negative prompts' text conditions from one forward of the text tower."""
        if not negative_prompts:
            return self.encode_text(text), None
        if isinstance(text, torch.Tensor) or len(negative_prompts) != len(text):
            raise ValueError(f"negative prompts need one string per prompt ({len(text)}), got {len(negative_prompts)}")
        both = self.encode_text([*text, *negative_prompts])
        return both.rows(0, len(text)), both.rows(len(text), 2 * len(text))

    @torch.no_grad()
    def mix(self, items: Sequence[tuple[str | torch.Tensor, float]], settings: SamplingSettings | None = None, *,
            num_images: int = 1, seed: int = 0, generator: Generator = None, on_step: OnStep | None = None) -> torch.Tensor:
        """Images of a weighted mix of prompts and pictures (Kandinsky's interpolate; unCLIP Sec. 3).

        Each item is a prompt or a (1, c, h, w) image with a weight > 0; their embeddings (prompts through the
        prior, with generators seeded `seed`) are combined by `mix_embeddings`. The heaviest prompt conditions
        a text-conditioned decoder (only pictures: its null text).
        """
        if not items:
            raise ValueError("mix needs at least one prompt or image with a weight")
        s = self.resolve(settings)
        embeds, conds = self._embed_ends([item for item, _ in items], s, seed, on_step)
        weights = [w for _, w in items]
        embeds = torch.cat(embeds)
        mixed = mix_embeddings(embeds, weights)
        if not self.unit_embeddings:  # keep the weighted mean norm of the items
            w = torch.tensor(weights, dtype=embeds.dtype, device=embeds.device)
            mixed = mixed * (w * embeds.norm(dim=-1)).sum() / w.sum()
        mixed = mixed.expand(num_images, -1)  # (n, d)
        heaviest = max((i for i, c in enumerate(conds) if c is not None), key=lambda i: weights[i], default=None)
        cond = None if heaviest is None else _stack_conditions([conds[heaviest]] * num_images, self._null_text)
        return self.decode(mixed, cond, s, generator=generator, on_step=on_step)

    @torch.no_grad()
    def variations(self, images: torch.Tensor, settings: SamplingSettings | None = None, *, num_variations: int = 1,
                   prompts: str | Sequence[str] | None = None, generator: Generator = None,
                   on_step: OnStep | None = None, negative_prompts: Sequence[str] | None = None) -> torch.Tensor:
        """unCLIP Sec. 3.1: decode each image's own embedding again; (b * num_variations, c, H, W) in [0, 1].

        The variations of image i are rows i * num_variations ... (i + 1) * num_variations - 1. Without
        prompts a text-conditioned decoder sees its learned null text; prompts (one, or one per row)
        steer the variations; negative prompts (one per row, through the prior) steer them away.
        """
        if num_variations < 1:
            raise ValueError(f"num_variations must be >= 1, got {num_variations}")
        s = self.resolve(settings)
        image_embed = self.embed_images(images).repeat_interleave(num_variations, dim=0)  # (b * n, d)
        rows = image_embed.shape[0]
        cond = negative = None
        if exists(prompts):
            prompts = [prompts] * rows if isinstance(prompts, str) else list(prompts)
            cond = self.encode_text(prompts)
        if negative_prompts:
            if not self.has_prior:
                raise ValueError("a negative prompt is embedded by the prior, and this model has none")
            negative = self.negative_condition(self.encode_text(list(negative_prompts)), s, generator=generator, on_step=on_step)
        return self.decode(image_embed, cond, s, generator=generator, on_step=on_step, negative=negative)

    @torch.no_grad()
    def interpolate(self, ends: Sequence[str | torch.Tensor], num_frames: int, settings: SamplingSettings | None = None, *,
                    seed: int = 0, batch_size: int = 8, on_step: OnStep | None = None) -> torch.Tensor:
        """unCLIP Sec. 3.2: frames (num_frames, c, H, W) decoded along slerp(a, b, t), t = 0 .. 1.

        `ends` are two prompts or (1, c, h, w) images. Prompts are encoded in one batch and embedded by
        the prior, each with a generator seeded `seed`; every frame starts from the same noise (its own
        generator seeded `seed`), so only the embedding changes along the path. The text of the nearer
        end conditions a text-conditioned decoder (an image end: its null text).
        """
        return torch.cat(list(self.interpolate_batches(ends, num_frames, settings, seed=seed, batch_size=batch_size,
                                                       on_step=on_step)))

    @torch.no_grad()
    def interpolate_batches(self, ends: Sequence[str | torch.Tensor], num_frames: int, settings: SamplingSettings | None = None,
                            *, seed: int = 0, batch_size: int = 8, on_step: OnStep | None = None) -> Iterator[torch.Tensor]:
        """`interpolate`'s frames batch by batch (up to `batch_size` frames each, in order), each as soon as it is decoded,
        so a long path is never held in memory whole."""
        if len(ends) != 2:
            raise ValueError(f"interpolation needs two ends (prompts or images), got {len(ends)}")
        if num_frames < 2:
            raise ValueError(f"num_frames must be >= 2 (both ends included), got {num_frames}")
        s = self.resolve(settings)
        embeds, conds = self._embed_ends(ends, s, seed, on_step)
        for start in range(0, num_frames, batch_size):
            ts = [i / (num_frames - 1) for i in range(start, min(start + batch_size, num_frames))]
            embed = torch.cat([self._slerp(embeds[0], embeds[1], t) for t in ts])  # (f, d)
            nearer = [conds[0 if t < 0.5 else 1] for t in ts]
            cond = None if all(c is None for c in nearer) else _stack_conditions(nearer, self._null_text)
            generators = [torch.Generator(device=self.device).manual_seed(seed) for _ in ts]
            yield self.decode(embed, cond, s, generator=generators, on_step=on_step)

    def _slerp(self, a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
        """slerp between two embeddings; raw embeddings keep the interpolated norm of their ends."""
        out = slerp(a, b, t)
        if self.unit_embeddings:
            return out
        return out * torch.lerp(a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True), t)

    def _embed_ends(self, ends, s: SamplingSettings, seed: int, on_step):
        """Image embeddings (1, d) and text conditions (or None) of prompts and pictures (interpolate, mix)."""
        prompts = [e for e in ends if isinstance(e, str)]
        if prompts and not self.has_prior:
            raise ValueError(f"this model has no prior, so {prompts[0]!r} cannot be embedded; give images")
        text = self.encode_text(prompts) if prompts else None
        prompt_embeds = []
        if prompts:
            generators = [torch.Generator(device=self.device).manual_seed(seed) for _ in prompts]
            prompt_embeds = list(self.sample_prior(text, s, generator=generators, on_step=on_step).split(1))
        embeds, conds, j = [], [], 0
        for end in ends:
            if isinstance(end, str):
                embeds.append(prompt_embeds[j])
                conds.append(text.rows(j, j + 1))
                j += 1
            else:
                embeds.append(self.embed_images(end))
                conds.append(None)
        return embeds, conds

    def _null_text(self, like: TextCondition) -> TextCondition:
        """A one-row condition standing for "no text", shaped like `like` (see `decode`)."""
        raise ValueError("this model cannot mix prompt and image ends")


def prior_steps(prior, settings: SamplingSettings):
    """What a prior's `sample` takes as `steps` for these settings: the prior step count at the settings' spacing."""
    return steps_for(prior.diffusion, settings.prior_steps, settings.spacing)


def edit_options(edit: ImageEdit | None, batch: int) -> dict:
    """A cascade's `sample` keywords (`Decoder`, `KarloCascade`) for img2img (SDEdit) or inpainting (RePaint keeps
    where the mask is False)."""
    if edit is None:
        return {}
    image = edit.image.expand(batch, -1, -1, -1) if edit.image.shape[0] == 1 else edit.image
    if edit.mask is None:
        return dict(init_image=image, strength=edit.strength)
    if edit.strength != 1.0:
        raise ValueError("inpainting re-draws the masked region fully; strength applies to img2img without a mask")
    mask = edit.mask.expand(batch, -1, -1) if edit.mask.shape[0] == 1 else edit.mask
    return dict(inpaint_image=image, inpaint_mask=~mask)


def _field_named(err: Exception) -> str:
    text = str(err)
    return next((f for f in SamplingSettings.__dataclass_fields__ if text.startswith(f)), "settings")


def _stack_conditions(rows: list[TextCondition | None], null: Callable[[TextCondition], TextCondition]) -> TextCondition:
    """One batched condition from single rows; a None row is the family's null text."""
    like = next(r for r in rows if r is not None)
    return TextCondition.cat([r if r is not None else null(like) for r in rows])


__all__ = [
    "PRIOR_STAGE",
    "ImageEdit",
    "NonFiniteOutputError",
    "OnStep",
    "Pipeline",
    "SettingError",
    "StageDefaults",
    "TextCondition",
    "check_finite",
    "edit_options",
    "per_stage",
    "prior_steps",
]
