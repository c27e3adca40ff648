"""KandinskyDecoder: Kandinsky 2.2's image-embedding-conditioned latent U-Net, its MoVQ and its diffusion.

The decoder (an ADM U-Net, `adm.AdmUnet` with `image_embed_dim`) sees no text: it is conditioned on a CLIP
ViT-bigG image embedding alone, from which it makes 32 context tokens and a time-embedding term. It denoises
MoVQ latents 8 times smaller than the picture, predicting eps (its variance channels are trained but unused:
diffusers' scheduler config implies a fixed variance, so they are dropped). Guidance's unconditional branch is
a negative prompt's prior sample or, without one, `null_image_embed`: the CLIP vision tower's embedding of the
all-zero (after normalisation) 224 px image, a constant of the checkpoint computed once at conversion.

The schedule is DDPM's linear one from `beta_start` to `beta_end` in float32 (diffusers' DDPMScheduler), sampled
by default on diffusers' "leading" timesteps shifted by `steps_offset` (`diffusion.spacing.leading_timesteps`).

`stage(...)` is the decoder as one `cascade.Stage` (MoVQ as its codec; the inpainting U-Net of
kandinsky-2-2-decoder-inpaint as its inpainting network when given); `sample(...)` is the thin front that runs it.
Pictures are any multiple of `config.downsample_factor` (64) per side from half to twice the size the U-Net was
trained at (`config.default_size`: 512 for Kandinsky 2.2, so 256 .. 1024).
"""

from __future__ import annotations

from dataclasses import field

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_core.adm import AdmAttentionConfig, AdmBlocksConfig, AdmConditioningConfig, AdmUnet, AdmUnetConfig
from dalle2_core.cascade import Picture, Stage, hw, sample_cascade, stage_settings
from dalle2_core.config import Config, config_dataclass
from dalle2_core.diffusion import DiffusionConfig, GaussianDiffusion
from dalle2_core.helpers import default, eval_mode, exists, normalize_neg_one_to_one, unnormalize_zero_to_one
from dalle2_core.movq import MoVQ, MoVQConfig

STAGE = "decoder"
# diffusers' Kandinsky 2.2 inpainting grows the region to re-draw by one latent pixel towards these neighbours (its
# `prepare_mask` loop): up, down, left, right and the two diagonal corners (-1, -1), (+1, +1), not the other two
GROWTH = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])


def kandinsky_unet() -> AdmUnetConfig:
    """kandinsky-2-2-decoder's U-Net (diffusers `UNet2DConditionModel`, ≈ 1.25 B parameters)."""
    return AdmUnetConfig(
        sample_size=64, in_channels=4, out_channels=8, widths=(384, 768, 1152, 1536), layers_per_block=3,
        conditioning=AdmConditioningConfig(context_dim=768, image_embed_dim=1280, image_tokens=32),
        attention=AdmAttentionConfig(levels=(False, True, True, True), middle=True, head_dim=64),
        blocks=AdmBlocksConfig(scale_shift=True),
    )


def kandinsky_decoder_diffusion() -> DiffusionConfig:
    """diffusers' DDPMScheduler as Kandinsky configures it: eps, fixed small variance, no clamp, 100 steps."""
    return DiffusionConfig(beta_schedule="linear", float32_schedule=True, posterior_log_variance="unclipped", sample_steps=100)


@config_dataclass
class KandinskyDecoderConfig(Config):
    unet: AdmUnetConfig = field(default_factory=kandinsky_unet)
    movq: MoVQConfig = field(default_factory=MoVQConfig)
    diffusion: DiffusionConfig = field(default_factory=kandinsky_decoder_diffusion)
    beta_start: float = 0.00085  # the linear schedule's ends (DiffusionConfig's "linear" alone is DDPM's 1e-4 .. 0.02)
    beta_end: float = 0.012
    steps_offset: int = 1  # added to diffusers' "leading" timesteps: the last step is t = steps_offset

    def __post_init__(self):
        unet, latent = self.unet, self.movq.latent_channels
        if not exists(unet.conditioning.image_embed_dim):
            raise ValueError("the decoder U-Net must be conditioned on an image embedding (unet.conditioning.image_embed_dim)")
        if unet.in_channels != latent or unet.out_channels not in (latent, 2 * latent):
            raise ValueError(
                f"the U-Net must map the {latent} MoVQ latent channels to eps (+ variance channels): "
                f"it has in {unet.in_channels}, out {unet.out_channels}"
            )
        d = self.diffusion
        if d.beta_schedule != "linear" or d.learned_variance or d.objective != "eps":
            raise ValueError("the decoder diffusion is a linear-schedule eps diffusion with a fixed variance")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if isinstance(self.steps_offset, bool) or not isinstance(self.steps_offset, int) or not 0 <= self.steps_offset < d.timesteps:
            raise ValueError(f"steps_offset must be an int in 0 .. {d.timesteps - 1}, got {self.steps_offset!r}")

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent pixel times the U-Net's own downsampling: picture sizes are multiples of this."""
        return self.movq.downsample_factor * self.unet.downsample_factor

    @property
    def default_size(self) -> int:
        """The side of the pictures the U-Net was trained on (its sample size in pixels): 512 for Kandinsky 2.2."""
        return self.unet.sample_size * self.movq.downsample_factor

    def sizes(self) -> str:
        """The picture sizes it makes, in words."""
        step, side = self.downsample_factor, self.default_size
        return f"multiples of {step} from {max(step, side // 2)} to {2 * side} per side"

    def check_size(self, height: int, width: int) -> None:
        """Refuses a picture size the decoder does not make (`sizes`), naming it."""
        step, side = self.downsample_factor, self.default_size
        for s in (height, width):
            if isinstance(s, bool) or not isinstance(s, int) or s % step or not max(step, side // 2) <= s <= 2 * side:
                raise ValueError(f"picture size {width}x{height} is not supported; accepted: {self.sizes()}")

    def to_diffusion(self) -> GaussianDiffusion:
        d = self.diffusion
        # as DDPMScheduler builds them
        betas = torch.linspace(self.beta_start, self.beta_end, d.timesteps, dtype=torch.float32, device="cpu")
        return GaussianDiffusion(betas, objective=d.objective, float32_schedule=True, posterior_log_variance=d.posterior_log_variance)


class KandinskyDecoder(nn.Module):
    """unet + movq + `null_image_embed`; `forward(x, t, image_embed=...)` is the model function (eps) of `diffusion`."""

    def __init__(self, unet: AdmUnet | None = None, movq: MoVQ | None = None, *, config: KandinskyDecoderConfig | dict | None = None,
                 **kwargs):
        super().__init__()
        unknown = sorted(set(kwargs) - {"diffusion", "beta_start", "beta_end", "steps_offset"})
        if unknown:
            accepted = "unet, movq, diffusion, beta_start, beta_end, steps_offset"
            raise TypeError(f"KandinskyDecoder got unknown option(s) {unknown}; accepted: {accepted}")
        for name, module, cls in (("unet", unet, AdmUnet), ("movq", movq, MoVQ)):
            if exists(module) and not isinstance(module, cls):
                raise TypeError(f"{name} must be a {cls.__name__}, got {type(module).__name__}")
            if exists(module):
                kwargs[name] = module.config
        # the defaults are Kandinsky 2.2's (Config.build alone would take each sub-config's own)
        self.config = c = KandinskyDecoderConfig.build(default(config, KandinskyDecoderConfig), owner="KandinskyDecoder", **kwargs)
        self.unet = default(unet, lambda: AdmUnet(c.unet))
        self.movq = default(movq, lambda: MoVQ(c.movq))
        self.register_buffer("null_image_embed", torch.zeros(c.unet.conditioning.image_embed_dim))
        self.diffusion = c.to_diffusion()

    @classmethod
    def from_config(cls, config: KandinskyDecoderConfig | dict) -> KandinskyDecoder:
        """Rebuild (untrained, `null_image_embed` zero) from a saved config; load the weights with `load_state_dict`."""
        return cls(config=config)

    @property
    def latent_channels(self) -> int:
        return self.config.movq.latent_channels

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(channels, h, w) of the latent a height × width picture is sampled as (`config.check_size`)."""
        self.config.check_size(height, width)
        f = self.config.movq.downsample_factor
        return self.latent_channels, height // f, width // f

    def null_image_embeds(self, batch: int) -> torch.Tensor:
        """The unconditional image embedding (the zero image's) for `batch` rows (b, image_embed_dim)."""
        return self.null_image_embed[None].expand(batch, -1)

    def encode_context(self, image_embed: torch.Tensor) -> dict:
        """`forward`'s keywords with the U-Net's context keys and values projected once (see `AdmUnet.encode_context`)."""
        return self.unet.encode_context(image_embed=image_embed)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **unet_kwargs) -> torch.Tensor:
        """Latents x (b, latent_channels, h, w), t (b,) -> predicted eps (b, latent_channels, h, w); `image_embed=` (b, d)
        or `encode_context`'s keywords. The U-Net's variance channels are dropped."""
        return self.unet(x, t, **unet_kwargs)[:, : self.latent_channels]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pictures (b, 3, H, W) in [0, 1] -> MoVQ latents (b, latent_channels, H / 8, W / 8), unquantised (img2img, inpainting)."""
        return self.movq.encode(normalize_neg_one_to_one(images))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> pictures in [0, 1], decoded without quantisation (diffusers' `force_not_quantize=True`)."""
        return unnormalize_zero_to_one(self.movq.decode(latents)).clamp(0.0, 1.0)

    # ---- sampling ---------------------------------------------------------------------------------------

    def stage(self, image_embed: torch.Tensor, negative_image_embed: torch.Tensor | None = None, *,
              size: int | tuple[int, int] | None = None, inpaint_unet: AdmUnet | None = None) -> Stage:
        """The decoder as a cascade stage for one run: latents of a `size` picture ((height, width) or a side; default
        `config.default_size`) guided on eps, the unconditional branch `negative_image_embed` (a negative prompt's prior
        sample; default the zero-image embedding); MoVQ as the codec; diffusers' leading timesteps with `steps_offset`
        and its img2img step count (int(strength · steps)). `inpaint_unet` (kandinsky-2-2-decoder-inpaint's, 9 input
        channels: latents ‖ masked picture latents ‖ keep mask) is the network an inpainting run uses."""
        b, c = image_embed.shape[0], self.config
        height, width = hw(default(size, c.default_size))
        _, h, w = self.latent_shape(height, width)
        param = next(self.unet.parameters())
        negative = default(negative_image_embed, lambda: self.null_image_embeds(b))
        negative = negative.to(device=image_embed.device, dtype=image_embed.dtype)
        if negative.shape != image_embed.shape:
            raise ValueError(f"negative_image_embed has shape {tuple(negative.shape)}; image_embed has {tuple(image_embed.shape)}")
        unet = inpaint_unet if exists(inpaint_unet) else self.unet
        if exists(inpaint_unet):
            _check_inpaint_unet(inpaint_unet, self.unet.config)
            param = next(inpaint_unet.parameters())
        # the 32 context tokens and every attention layer's keys and values depend on neither x_t nor t: once per run
        encode = lambda **kw: unet.encode_context(**kw)  # noqa: E731
        return Stage(
            name=STAGE, network=_Inpainting(unet, self.latent_channels) if exists(inpaint_unet) else self, diffusion=self.diffusion,
            size=(height, width), latent_size=(h, w), channels=self.latent_channels, dtype=param.dtype, device=param.device,
            codec=self.movq, cond=dict(image_embed=image_embed), uncond=dict(image_embed=negative), encode=encode,
            denoise_fn=c.diffusion.denoise_fn(), default_steps=c.diffusion.sample_steps, default_spacing="leading",
            spacing_offset=c.steps_offset, strength_rounding="floor", inpaint_mask=grow_repainted if exists(inpaint_unet) else None,
        )

    @torch.no_grad()
    def sample(self, image_embed: torch.Tensor, *, negative_image_embed: torch.Tensor | None = None, size=None, cond_scale: float = 4.0,
               steps: int | tuple | None = None, sampler: str = "ddpm", spacing: str | None = None, generator=None, on_step=None,
               init_image: torch.Tensor | None = None, strength: float = 1.0, inpaint_image: torch.Tensor | None = None,
               inpaint_mask: torch.Tensor | None = None, inpaint_unet: AdmUnet | None = None, inpaint_resample_times: int = 5,
               ) -> torch.Tensor:
        """Pictures (b, 3, height, width) in [0, 1] from image embeddings (b, d), as KandinskyV22Pipeline makes them.

        From a picture, as `KarloCascade.sample`: `init_image` (b, 3, H, W) in [0, 1] with `strength` < 1 (img2img:
        the last int(strength · steps) steps re-drawn); `inpaint_image` with `inpaint_mask` (b, H, W), True = keep,
        inpaints with `inpaint_unet` (diffusers' KandinskyV22InpaintPipeline) or, without one, RePaint on the decoder;
        the kept pixels are returned exactly. `steps` default 100 (diffusers' call default); `spacing` default "leading".
        `on_step(1, i, total, x)` after each step; `generator`: one generator or one per picture.
        """
        settings = stage_settings(1, cond_scale=cond_scale, steps=steps, sampler=sampler, spacing=spacing)
        picture = Picture.of(init_image, strength, inpaint_image, inpaint_mask, inpaint_resample_times)
        hook = (lambda position, i, total, x: on_step(position + 1, i, total, x)) if exists(on_step) else None
        with eval_mode(self), eval_mode(inpaint_unet if exists(inpaint_unet) else self.unet):
            stage = self.stage(image_embed, negative_image_embed, size=size, inpaint_unet=inpaint_unet if exists(inpaint_image) else None)
            return sample_cascade([stage], settings, batch_size=image_embed.shape[0], generator=generator, on_step=hook, picture=picture)


def grow_repainted(keep: torch.Tensor) -> torch.Tensor:
    """A keep mask (b, 1, h, w) bool with the region to re-draw grown by one pixel as diffusers' Kandinsky 2.2
    inpainting grows it (`GROWTH`): the mask its inpainting U-Net was trained with."""
    repainted = (~keep).float()
    grown = F.conv2d(repainted, GROWTH.to(repainted)[None, None], padding=1) > 0  # (b, 1, h, w)
    return ~grown


def _check_inpaint_unet(inpaint: AdmUnet, unet: AdmUnetConfig) -> None:
    latent = unet.in_channels
    c = inpaint.config
    if not isinstance(inpaint, AdmUnet) or c.in_channels != 2 * latent + 1 or c.out_channels != unet.out_channels:
        raise ValueError(f"the inpainting U-Net must take {2 * latent + 1} channels (latents, masked picture latents, mask) and give "
                         f"{unet.out_channels}; it has in {c.in_channels}, out {c.out_channels}")
    if c.conditioning.image_embed_dim != unet.conditioning.image_embed_dim:
        raise ValueError(f"the inpainting U-Net reads {c.conditioning.image_embed_dim}-wide image embeddings; the decoder's "
                         f"are {unet.conditioning.image_embed_dim}")


class _Inpainting:
    """The inpainting U-Net as the stage's network: called on [x_t ‖ masked picture latents ‖ keep mask], eps out."""

    def __init__(self, unet: AdmUnet, channels: int):
        self.unet, self.channels = unet, channels

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *, masked: torch.Tensor, mask: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.unet(torch.cat([x, masked, mask], dim=1), t, **kwargs)[:, : self.channels]  # (b, 2c + 1, h, w) in


__all__ = ["KandinskyDecoder", "KandinskyDecoderConfig", "grow_repainted", "kandinsky_decoder_diffusion", "kandinsky_unet"]
