"""KandinskyDecoder: Kandinsky 2.2's image-embedding-conditioned latent U-Net, its MoVQ and its diffusion.

The decoder (an ADM U-Net, `adm.AdmUnet` with `image_embed_dim`) sees no text: it is conditioned on a CLIP
ViT-bigG image embedding alone, from which it makes 32 context tokens and a time-embedding term. It denoises
MoVQ latents 8 times smaller than the picture, predicting eps (its variance channels are trained but unused:
diffusers' scheduler config implies a fixed variance, so they are dropped). Guidance's unconditional branch is
a negative prompt's prior sample or, without one, `null_image_embed`: the CLIP vision tower's embedding of the
all-zero (after normalisation) 224 px image, a constant of the checkpoint computed once at conversion.

The schedule is DDPM's linear one from `beta_start` to `beta_end` in float32 (diffusers' DDPMScheduler), sampled
on diffusers' "leading" timesteps shifted by `steps_offset` (`diffusion.spacing.leading_timesteps`).
"""

from __future__ import annotations

from dataclasses import field

import torch
from torch import nn

from dalle2_core.adm import AdmAttentionConfig, AdmBlocksConfig, AdmConditioningConfig, AdmUnet, AdmUnetConfig
from dalle2_core.config import Config, config_dataclass
from dalle2_core.diffusion import DiffusionConfig, GaussianDiffusion
from dalle2_core.diffusion.spacing import leading_timesteps
from dalle2_core.helpers import default, exists, normalize_neg_one_to_one, unnormalize_zero_to_one
from dalle2_core.movq import MoVQ, MoVQConfig


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

    def sampling_diffusion(self, steps: int | None = None) -> GaussianDiffusion:
        """The diffusion over diffusers' leading timesteps of a `steps`-step run (default `diffusion.sample_steps`): alpha_bar
        kept at each, each beta 1 - alpha_bar_t / alpha_bar_prev in float32, as DDPMScheduler.step computes them."""
        full = self.to_diffusion()
        kept = leading_timesteps(full.num_timesteps, default(steps, self.diffusion.sample_steps), self.steps_offset)
        alphas_cumprod = full.alphas_cumprod[kept].to(torch.float32)  # exact: float32 values
        betas = 1.0 - alphas_cumprod / torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        return GaussianDiffusion(betas, alphas_cumprod=alphas_cumprod, timestep_map=kept, objective=self.diffusion.objective,
                                 float32_schedule=True, posterior_log_variance=self.diffusion.posterior_log_variance)

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
        """(channels, h, w) of the latent a height × width picture is sampled as; sizes must be multiples of
        `config.downsample_factor` (64 for Kandinsky 2.2)."""
        step = self.config.downsample_factor
        if any(isinstance(s, bool) or not isinstance(s, int) or s < step or s % step for s in (height, width)):
            raise ValueError(f"picture size {width}x{height} is not supported; accepted: positive multiples of {step}")
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


__all__ = ["KandinskyDecoder", "KandinskyDecoderConfig", "kandinsky_decoder_diffusion", "kandinsky_unet"]
