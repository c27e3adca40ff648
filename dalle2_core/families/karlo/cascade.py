"""KarloCascade: Karlo's decoder cascade, CLIP image embedding (+ text) -> 64 px -> 256 px image.

unCLIP's decoder (Ramesh et al. 2022 sec. 2.1) as Kakao Brain's Karlo v1-alpha builds it: `TextProj`
turns the CLIP image embedding, text embedding and text states into the 64 px decoder's context and
added time embedding; the decoder (an ADM U-Net with learned variance) is guided on eps only, its
unconditional branch being the learned null image embedding with the empty prompt's text; two
unconditioned super-resolution U-Nets take the clamped, bicubic-upsampled 64 px image: `super_res_first`
for every step but the last, `super_res_last` (fine-tuned with adversarial and perceptual losses)
for the final one. The diffusion math is `dalle2_core.diffusion`; the text encoder is the caller's.
"""

from __future__ import annotations

from dataclasses import field

import torch
from torch import nn

from dalle2_core.adm.config import AdmAttentionConfig, AdmBlocksConfig, AdmConditioningConfig, AdmUnetConfig
from dalle2_core.adm.text_proj import TextProj, TextProjConfig
from dalle2_core.adm.unet import AdmUnet
from dalle2_core.cascade import Picture, Stage, sample_cascade, stage_settings
from dalle2_core.conditioning import Condition, TextCondition
from dalle2_core.config import Config, config_dataclass
from dalle2_core.diffusion import DiffusionConfig
from dalle2_core.families.karlo.defaults import KARLO_DEFAULTS
from dalle2_core.helpers import default, eval_mode, exists, resize

STAGES = ("decoder", "super_res")


def karlo_decoder_unet() -> AdmUnetConfig:
    """Karlo v1-alpha's 64 px decoder (diffusers `UNet2DConditionModel`, ≈ 885 M parameters)."""
    return AdmUnetConfig(
        sample_size=64, in_channels=3, out_channels=6, widths=(320, 640, 960, 1280), layers_per_block=3,
        conditioning=AdmConditioningConfig(added_time_embed=True, context_dim=1536),
        attention=AdmAttentionConfig(levels=(False, True, True, True), middle=True, head_dim=64),
        blocks=AdmBlocksConfig(scale_shift=True),
    )


def karlo_super_res_unet() -> AdmUnetConfig:
    """Karlo v1-alpha's 64 -> 256 super-resolution U-Net (diffusers `UNet2DModel`, ≈ 692 M parameters)."""
    return AdmUnetConfig(
        sample_size=256, in_channels=6, out_channels=3, widths=(320, 640, 960, 1280), layers_per_block=3,
        blocks=AdmBlocksConfig(scale_shift=False),
    )


def karlo_decoder_diffusion() -> DiffusionConfig:
    """diffusers' Karlo decoder scheduler: eps, learned range with an unclipped minimum, x_0 clamped to ±1."""
    return DiffusionConfig(learned_variance=True, float32_schedule=True, posterior_log_variance="unclipped", x0_clamp=1.0,
                           sample_steps=KARLO_DEFAULTS.steps[0])


def karlo_super_res_diffusion() -> DiffusionConfig:
    """diffusers' Karlo super-resolution scheduler: eps, fixed_small_log, x_0 clamped to ±1, 7 steps."""
    return DiffusionConfig(float32_schedule=True, posterior_log_variance="unclipped", x0_clamp=1.0, sample_steps=KARLO_DEFAULTS.steps[1])


@config_dataclass
class KarloCascadeConfig(Config):
    text_proj: TextProjConfig = field(default_factory=TextProjConfig)
    decoder: AdmUnetConfig = field(default_factory=karlo_decoder_unet)
    super_res_first: AdmUnetConfig = field(default_factory=karlo_super_res_unet)
    super_res_last: AdmUnetConfig = field(default_factory=karlo_super_res_unet)
    decoder_diffusion: DiffusionConfig = field(default_factory=karlo_decoder_diffusion)
    super_res_diffusion: DiffusionConfig = field(default_factory=karlo_super_res_diffusion)

    def __post_init__(self):
        dec, proj, first, last = self.decoder, self.text_proj, self.super_res_first, self.super_res_last
        cond = dec.conditioning
        if not cond.added_time_embed or cond.context_dim != proj.context_dim or dec.time_embed_dim != proj.time_embed_dim:
            raise ValueError(
                f"the decoder must take text_proj's context ({proj.context_dim} wide) and added time embedding "
                f"({proj.time_embed_dim}); it has context_dim={cond.context_dim}, time_embed_dim={dec.time_embed_dim}, "
                f"added_time_embed={cond.added_time_embed}"
            )
        channels = dec.out_channels // 2 if self.decoder_diffusion.learned_variance else dec.out_channels
        if dec.in_channels != channels:
            raise ValueError(f"decoder in_channels={dec.in_channels} and out_channels={dec.out_channels} disagree with its diffusion")
        for name, sr in (("super_res_first", first), ("super_res_last", last)):
            if sr.in_channels != 2 * channels or sr.out_channels != channels or sr.attends or sr.conditioning.added_time_embed:
                raise ValueError(
                    f"{name} must be an unconditioned U-Net from {2 * channels} channels (noisy image ‖ upsampled low-res) "
                    f"to {channels}; it has in {sr.in_channels}, out {sr.out_channels}"
                )
        if first.sample_size != last.sample_size or first.sample_size % dec.sample_size:
            raise ValueError(
                f"super-resolution sample sizes {first.sample_size}/{last.sample_size} must agree and be multiples of {dec.sample_size}"
            )
        if self.super_res_diffusion.learned_variance:
            raise ValueError("the super-resolution diffusion has a fixed variance (learned_variance=False)")


class KarloCascade(nn.Module):
    """text_proj + 64 px decoder + super_res_first + super_res_last, and their two diffusions."""

    def __init__(
        self,
        text_proj: TextProj | None = None,
        decoder: AdmUnet | None = None,
        super_res_first: AdmUnet | None = None,
        super_res_last: AdmUnet | None = None,
        *,
        config: KarloCascadeConfig | dict | None = None,
        **kwargs,
    ):
        super().__init__()
        given = dict(text_proj=text_proj, decoder=decoder, super_res_first=super_res_first, super_res_last=super_res_last)
        unknown = sorted(set(kwargs) - {"decoder_diffusion", "super_res_diffusion"})
        if unknown:
            accepted = "text_proj, decoder, super_res_first, super_res_last, decoder_diffusion, super_res_diffusion"
            raise TypeError(f"KarloCascade got unknown option(s) {unknown}; accepted: {accepted}")
        for name, module in given.items():
            expected = TextProj if name == "text_proj" else AdmUnet
            if exists(module) and not isinstance(module, expected):
                raise TypeError(f"{name} must be a {expected.__name__}, got {type(module).__name__}")
        kwargs.update({name: module.config for name, module in given.items() if exists(module)})
        self.config = c = KarloCascadeConfig.build(
            default(config, KarloCascadeConfig), owner="KarloCascade", **kwargs
        )  # the defaults are Karlo v1-alpha's (Config.build alone would take each sub-config's own)
        self.text_proj = default(text_proj, lambda: TextProj(c.text_proj))
        self.decoder = default(decoder, lambda: AdmUnet(c.decoder))
        self.super_res_first = default(super_res_first, lambda: AdmUnet(c.super_res_first))
        self.super_res_last = default(super_res_last, lambda: AdmUnet(c.super_res_last))
        self.decoder_diffusion = c.decoder_diffusion.to_diffusion()
        self.super_res_diffusion = c.super_res_diffusion.to_diffusion()

    @classmethod
    def from_config(cls, config: KarloCascadeConfig | dict) -> KarloCascade:
        """Rebuild (untrained) from a saved config; load the weights with `load_state_dict`."""
        return cls(config=config)

    @property
    def image_size(self) -> int:
        return self.config.super_res_first.sample_size

    @property
    def channels(self) -> int:
        return self.config.decoder.in_channels

    @torch.no_grad()
    def sample(
        self,
        image_embed: torch.Tensor,
        text_encodings: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        *,
        text_embed: torch.Tensor,
        cond_scale: float | tuple[float, float] = (8.0, 1.0),
        steps: int | str | tuple | None = None,
        sampler: str | tuple[str, str] = "ddpm",
        generator=None,
        on_step=None,
        uncond: Condition | TextCondition | None = None,
        init_image: torch.Tensor | None = None,
        strength: float = 1.0,
        inpaint_image: torch.Tensor | None = None,
        inpaint_mask: torch.Tensor | None = None,
        inpaint_resample_times: int = 5,
        spacing: str | None = None,
    ) -> torch.Tensor:
        """Images (b, channels, image_size, image_size) in [0, 1] from CLIP embeddings.

        From a picture, as `Decoder.sample`: `init_image` (b, c, H, W) in [0, 1] with `strength` < 1 starts both
        stages from it (SDEdit; 0 returns it at the output size); `inpaint_image` with `inpaint_mask` (b, H, W),
        True = keep, inpaints (RePaint) and returns the kept pixels exactly.

        image_embed, text_embed (b, clip_dim); text_encodings (b, n, clip_dim); text_mask (b, n) bool.
        `uncond`: guidance's unconditional branch, needed when the decoder's `cond_scale != 1`: the empty prompt's
        `TextCondition` (1 row or b) with the learned null image embedding, or a `Condition` whose image embedding
        (a negative prompt's prior embedding, Kandinsky-style) replaces that null. `cond_scale`, `steps`, `sampler`
        are one value or (decoder, super-resolution); the super-resolution stage is unconditioned, so its scale is
        not used; `steps` default to the config's `sample_steps`. `on_step(stage_number, i, total, x)` as in
        `Decoder.sample` (1 = decoder, 2 = super-resolution). `generator`: one generator or one per image (an image's
        noise is then the same alone or in a batch). `spacing`: which timesteps the steps visit (`diffusion.spacing`).
        """
        settings = stage_settings(2, cond_scale=cond_scale, steps=steps, sampler=sampler, spacing=spacing)
        if isinstance(uncond, TextCondition):
            uncond = Condition(None, uncond)
        if not exists(uncond) and settings[0].cond_scale != 1.0:
            raise ValueError(f"cond_scale={settings[0].cond_scale} needs uncond: the empty prompt's TextCondition")
        picture = Picture.of(init_image, strength, inpaint_image, inpaint_mask, inpaint_resample_times)
        text = TextCondition(text_embed, text_encodings, text_mask)
        hook = (lambda position, i, total, x: on_step(position + 1, i, total, x)) if exists(on_step) else None
        with eval_mode(self):
            stages = [self.decoder_stage(image_embed, text, uncond), self.super_res_stage()]
            return sample_cascade(stages, settings, batch_size=image_embed.shape[0], generator=generator, on_step=hook,
                                  picture=picture)

    @torch.no_grad()
    def upscale(self, images: torch.Tensor, *, steps=None, sampler: str = "ddpm", generator=None, on_step=None,
                spacing: str | None = None) -> torch.Tensor:
        """The super-resolution stage alone on [0, 1] images at the decoder's size (b, c, s, s); [0, 1] out.
        `on_step(2, i, total, x)` as in `sample`."""
        hook = (lambda position, i, total, x: on_step(2, i, total, x)) if exists(on_step) else None
        with eval_mode(self):
            return sample_cascade([self.super_res_stage()], stage_settings(1, steps=steps, sampler=sampler, spacing=spacing),
                                  batch_size=images.shape[0], generator=generator, on_step=hook, start=images * 2 - 1)

    def decoder_stage(self, image_embed: torch.Tensor, text: TextCondition, uncond: Condition | None) -> Stage:
        """The 64 px stage: the decoder guided on eps, its context and added time embedding projected once per run."""
        b, c = image_embed.shape[0], self.config
        text = text.with_mask()
        cond = dict(image_embed=image_embed, **text.tensors())
        negative = cond  # without guidance the unconditional branch never runs
        if exists(uncond):
            empty = uncond.text.expand(b, "uncond")
            empty = empty._replace(text_mask=default(empty.text_mask, lambda: torch.ones_like(text.text_mask)))
            null_image = uncond.image_embed if exists(uncond.image_embed) else self.text_proj.null_image_embeds(b)
            negative = dict(image_embed=null_image.to(image_embed.dtype), **empty.tensors())
        param = next(self.decoder.parameters())
        # the context and added time embedding depend on neither x_t nor t: projected once per run
        # (and so is every attention layer's projection of the context to keys and values)
        encode = lambda **kw: self.decoder.encode_context(**self.text_proj(**kw))  # noqa: E731
        return Stage(
            name="decoder", network=self.decoder, diffusion=self.decoder_diffusion, size=c.decoder.sample_size,
            channels=self.channels, dtype=param.dtype, device=param.device, cond=cond, uncond=negative, encode=encode,
            denoise_fn=c.decoder_diffusion.denoise_fn(), default_steps=c.decoder_diffusion.sample_steps,
        )

    def super_res_stage(self) -> Stage:
        """64 -> 256 px: the clamped decoder image upsampled (bicubic, antialiased) beside the noisy image;
        `super_res_first` for every step but the last, `super_res_last` for the last."""
        c = self.config
        size = c.super_res_first.sample_size
        param = next(self.super_res_first.parameters())
        return Stage(
            name="super-res", network=_LowresConcat(self.super_res_first), final_network=_LowresConcat(self.super_res_last),
            diffusion=self.super_res_diffusion, size=size, channels=self.channels, dtype=param.dtype, device=param.device,
            guided=False, lowres=lambda previous, generator: {"lowres": resize(previous, size)},
            denoise_fn=c.super_res_diffusion.denoise_fn(), default_steps=c.super_res_diffusion.sample_steps,
        )


class _LowresConcat:
    """A super-resolution U-Net called on [noisy image ‖ upsampled low-resolution image] (b, 2·channels, s, s)."""

    def __init__(self, net: AdmUnet):
        self.net = net

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *, lowres: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, lowres], dim=1), t)


__all__ = [
    "KarloCascade",
    "KarloCascadeConfig",
    "karlo_decoder_diffusion",
    "karlo_decoder_unet",
    "karlo_super_res_diffusion",
    "karlo_super_res_unet",
]
