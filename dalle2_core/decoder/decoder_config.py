"""The typed config of the cascaded `Decoder`.

Options that can differ per cascade stage take a scalar (applied to every unet) or one value per
unet. The unet and VQ-GAN configs are nested, *after* the decoder has adapted them (low-res
conditioning, latent channels, learned-variance output), so a decoder is rebuilt from its config
alone.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, ClassVar

from dalle2_core.config import Config, config_dataclass
from dalle2_core.decoder.unet_config import UnetConfig
from dalle2_core.diffusion import BETA_SCHEDULES
from dalle2_core.diffusion.losses import SIMPLE_LOSSES
from dalle2_core.helpers import exists
from dalle2_core.vqgan.vae import VQGanVAEConfig

# the options that take one value for every unet or one per unet: (sub-config, field)
PER_UNET_OPTIONS = (
    ("diffusion", "sample_timesteps"),
    ("diffusion", "beta_schedule"),
    ("diffusion", "predict_x_start"),
    ("diffusion", "predict_v"),
    ("diffusion", "learned_variance"),
    ("diffusion", "p2_loss_weight_gamma"),
    ("lowres", "use_blur_for_lowres_cond"),
    ("lowres", "use_noise_for_lowres_cond"),
    ("lowres", "random_crop_sizes"),
)


@config_dataclass
class DecoderDiffusionConfig(Config):
    """How each stage's Gaussian diffusion is set up and trained."""

    timesteps: int = 1000
    sample_timesteps: Any = None  # int or one per unet; None samples with every training step
    beta_schedule: Any = None  # name or one per unet; None = cosine (Nichol & Dhariwal 2021)
    loss_type: str = "l2"
    predict_x_start: Any = False  # x0 objective, bool or one per unet
    predict_v: Any = False  # v objective (Salimans & Ho 2022), bool or one per unet
    learned_variance: Any = True  # a bare bool (or one value in a tuple) is the first unet only, as in the paper
    learned_variance_constrain_frac: bool = False
    vb_loss_weight: float = 1e-3
    p2_loss_weight_gamma: Any = 0.0  # float or one per unet (Choi et al. 2022)
    p2_loss_weight_k: float = 1.0
    ddim_sampling_eta: float = 0.0


@config_dataclass
class DecoderConditioningConfig(Config):
    """What the unets are conditioned on, the classifier-free dropout, and clamping at sampling."""

    condition_on_text_encodings: bool = False
    unconditional: bool = False
    image_cond_drop_prob: float = 0.1
    text_cond_drop_prob: float = 0.5
    clip_denoised: bool = True  # clamp predicted x0 of pixel-space stages while sampling
    dynamic_thresholding: bool = True  # Imagen (Saharia et al. 2022) instead of a static [-1, 1] clamp
    dynamic_thresholding_percentile: float = 0.95


@config_dataclass
class DecoderLowresConfig(Config):
    """Low-resolution conditioning of the super-resolution stages (Ho et al. 2021, sec. 4.1)."""

    lowres_downsample_first: bool = True
    use_blur_for_lowres_cond: Any = True  # bool or one per unet (the first is never blurred)
    use_noise_for_lowres_cond: Any = False  # Imagen noise augmentation, bool or one per unet
    blur_prob: float = 0.5
    blur_sigma: Any = (0.4, 0.6)  # float, or a (lo, hi) range drawn uniformly
    blur_kernel_size: Any = 3  # odd int, or an inclusive (lo, hi) range
    lowres_noise_sample_level: float = 0.2
    random_crop_sizes: Any = None  # None or one (int | None) per unet; never for the first


@config_dataclass
class DecoderConfig(Config):
    # DALLE2-pytorch's spellings; `image_size` is a one-stage `image_sizes`
    ALIASES: ClassVar[dict] = {
        "use_dynamic_thres": ("dynamic_thresholding", None),
        "dynamic_thres_percentile": ("dynamic_thresholding_percentile", None),
        "image_size": ("image_sizes", lambda size: (size,)),
    }

    unets: tuple = ()  # one unet config per stage, lowest resolution first
    vaes: tuple = ()  # one VQ-GAN config (latent stage) or None (pixel stage) per unet
    image_sizes: tuple = ()  # output resolution of each stage, strictly ascending
    channels: int = 3
    image_embed_dim: int | None = None  # needed only without a CLIP, to check embeddings
    text_embed_dim: int | None = None
    diffusion: DecoderDiffusionConfig = field(default_factory=DecoderDiffusionConfig)
    conditioning: DecoderConditioningConfig = field(default_factory=DecoderConditioningConfig)
    lowres: DecoderLowresConfig = field(default_factory=DecoderLowresConfig)

    @property
    def num_unets(self) -> int:
        return len(self.unets)

    def per_unet(self, value, name: str = "value") -> tuple:
        """`value` as one value per unet: a single value (bare or the one item of a list) serves every
        unet, else there must be exactly one per unet; `name` is the option an error names."""
        values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        if len(values) == 1:
            return values * self.num_unets
        if len(values) != self.num_unets:
            raise ValueError(f"{name} {value!r} needs one value or one per unet ({self.num_unets}), got {len(values)}")
        return values

    def option_per_unet(self, sub: str, name: str) -> tuple:
        """A per-unet option of sub-config `sub` (see `PER_UNET_OPTIONS`), one value per unet."""
        return self.per_unet(getattr(getattr(self, sub), name), name)

    def learned_variance_per_unet(self) -> tuple[bool, ...]:
        lv = self.diffusion.learned_variance
        if isinstance(lv, (tuple, list)) and len(lv) == 1:
            lv = lv[0]
        if isinstance(lv, bool):  # the paper learns the variance of the base model only
            return (lv,) + (False,) * (self.num_unets - 1)
        return tuple(bool(v) for v in self.per_unet(lv, "learned_variance"))

    def objectives(self) -> tuple[str, ...]:
        """Each unet's diffusion objective: "v" (predict_v), "x0" (predict_x_start) or "eps"."""
        pairs = zip(self.option_per_unet("diffusion", "predict_x_start"), self.option_per_unet("diffusion", "predict_v"))
        return tuple("v" if v else "x0" if x0 else "eps" for x0, v in pairs)

    def validate(self) -> None:
        d, c = self.diffusion, self.conditioning
        n = self.num_unets
        if n == 0:
            raise ValueError("Decoder needs at least one unet")
        if len(self.image_sizes) != n:
            raise ValueError(f"{n} unet(s) need {n} image size(s), got image_sizes={self.image_sizes!r}")
        if any(b <= a for a, b in zip(self.image_sizes, self.image_sizes[1:])):
            raise ValueError(f"image_sizes must be unique and ascending, got {self.image_sizes!r}")
        if len(self.vaes) != n:
            raise ValueError(f"expected {n} VQ-GAN entries (None for pixel stages), got {len(self.vaes)}")
        if d.loss_type not in SIMPLE_LOSSES:
            raise ValueError(f"loss_type {d.loss_type!r} is not supported; accepted: {', '.join(SIMPLE_LOSSES)}")
        for sub, name in PER_UNET_OPTIONS:
            self.option_per_unet(sub, name)  # one value or one per unet
        for name in self.option_per_unet("diffusion", "beta_schedule"):
            if exists(name) and name not in BETA_SCHEDULES:
                raise ValueError(f"beta_schedule {name!r} is not supported; accepted: {', '.join(BETA_SCHEDULES)}")
        for steps in self.option_per_unet("diffusion", "sample_timesteps"):
            if exists(steps) and not 0 < steps <= d.timesteps:
                raise ValueError(f"sample_timesteps {steps} must be in 1..timesteps ({d.timesteps})")
        for x0, v in zip(self.option_per_unet("diffusion", "predict_x_start"), self.option_per_unet("diffusion", "predict_v")):
            if x0 and v:
                raise ValueError("predict_x_start and predict_v cannot both be set for the same unet")
        if exists(self.option_per_unet("lowres", "random_crop_sizes")[0]):
            raise ValueError("the first unet generates from noise; it cannot be trained on random crops")
        for p, name in ((c.image_cond_drop_prob, "image_cond_drop_prob"), (c.text_cond_drop_prob, "text_cond_drop_prob")):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if not 0.0 < c.dynamic_thresholding_percentile <= 1.0:
            raise ValueError(f"dynamic_thresholding_percentile must be in (0, 1], got {c.dynamic_thresholding_percentile}")

    @classmethod
    def from_dict(cls, data: dict) -> DecoderConfig:
        data = dict(data)
        unets = tuple(u if isinstance(u, Config) else UnetConfig.from_dict(u) for u in data.pop("unets", ()))
        vaes = tuple(
            v if not isinstance(v, dict) else VQGanVAEConfig.from_dict(v) for v in data.pop("vaes", ())
        )
        return super().from_dict({**data, "unets": unets, "vaes": vaes})
