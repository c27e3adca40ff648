"""DiffusionPrior: trains and samples the prior network with Gaussian diffusion (DALL-E 2, Ramesh et al. 2022, sec. 2.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

from dalle2_core.clip import CLIP, ClipAdapter, as_clip_adapter
from dalle2_core.conditioning import TextCondition
from dalle2_core.config import Config, config_dataclass
from dalle2_core.diffusion import BETA_SCHEDULES, GaussianDiffusion, classifier_free_guidance, sample
from dalle2_core.diffusion.losses import SIMPLE_LOSSES
from dalle2_core.helpers import default, eval_mode, exists, l2norm, randn
from dalle2_core.prior.network import DiffusionPriorNetwork, DiffusionPriorNetworkConfig


@config_dataclass
class DiffusionPriorConfig(Config):
    """Diffusion and conditioning options of `DiffusionPrior`; `net` is its network's config."""

    net: DiffusionPriorNetworkConfig
    image_embed_dim: int
    image_size: int | None = None  # the CLIP's input size, recorded for the checkpoint
    image_channels: int = 3
    timesteps: int = 1000
    sample_timesteps: int | None = None  # default sampling steps (respaced); None = all
    cond_drop_prob: float = 0.0
    text_cond_drop_prob: float | None = None  # None → cond_drop_prob
    image_cond_drop_prob: float | None = None  # None → 0: noised-embedding dropout, never used by guidance
    loss_type: str = "l2"
    predict_x_start: bool = True
    predict_v: bool = False  # takes precedence over predict_x_start
    beta_schedule: str = "cosine"
    condition_on_text_encodings: bool = True
    sampling_clamp_l2norm: bool = False
    sampling_final_clamp_l2norm: bool = False
    training_clamp_l2norm: bool = False
    image_embed_scale: float | None = None  # None → sqrt(image_embed_dim)

    def __post_init__(self):
        if self.image_embed_dim != self.net.dim:
            raise ValueError(
                f"image_embed_dim {self.image_embed_dim} must equal the prior network's dim {self.net.dim}"
            )
        if self.timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {self.timesteps}")
        if exists(self.sample_timesteps) and not 1 <= self.sample_timesteps <= self.timesteps:
            raise ValueError(f"sample_timesteps must be in 1 .. timesteps={self.timesteps}, got {self.sample_timesteps}")
        for name in ("cond_drop_prob", "text_cond_drop_prob", "image_cond_drop_prob"):
            value = getattr(self, name)
            if exists(value) and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.loss_type not in SIMPLE_LOSSES:
            raise ValueError(f"unknown loss_type {self.loss_type!r}; accepted: {', '.join(SIMPLE_LOSSES)}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"unknown beta_schedule {self.beta_schedule!r}; accepted: {', '.join(BETA_SCHEDULES)}")
        if self.training_clamp_l2norm and self.objective != "x0":
            raise ValueError("training_clamp_l2norm needs predict_x_start=True and predict_v=False")
        if exists(self.image_embed_scale) and self.image_embed_scale <= 0:
            raise ValueError(f"image_embed_scale must be > 0, got {self.image_embed_scale}")

    @property
    def objective(self) -> str:
        if self.predict_v:
            return "v"
        return "x0" if self.predict_x_start else "eps"


def rerank_by_similarity(candidates: torch.Tensor, text_embed: torch.Tensor) -> torch.Tensor:
    """Per prompt, the candidate (b, r, d) with the highest cosine similarity to its text embed (DALL-E 2 sec. 2.2)."""
    sims = (l2norm(candidates) * l2norm(text_embed)[:, None]).sum(dim=-1)  # (b, r)
    best = sims.argmax(dim=1)
    return candidates[torch.arange(candidates.shape[0], device=candidates.device), best]  # (b, d)


class DiffusionPrior(nn.Module):
    """Gaussian diffusion over scaled CLIP image embeddings, conditioned on the text (DALL-E 2 sec. 2.2).

    Image embeddings are multiplied by `image_embed_scale` (default sqrt(dim), so they have unit
    variance per feature like the noise) for diffusion and divided back when sampling. The diffusion
    math comes from `dalle2_core.diffusion`; this class only wires CLIP, network and conditioning.
    """

    def __init__(
        self,
        net: DiffusionPriorNetwork,
        clip: CLIP | ClipAdapter | None = None,
        config: DiffusionPriorConfig | dict | None = None,
        **kwargs,
    ):
        super().__init__()
        if not isinstance(getattr(net, "config", None), DiffusionPriorNetworkConfig):
            raise TypeError(f"net must be a DiffusionPriorNetwork, got {type(net).__name__}")
        net_options = sorted(set(kwargs) & set(DiffusionPriorNetworkConfig._all_option_names()))
        if net_options:
            raise TypeError(f"DiffusionPrior got network option(s) {net_options}; give them to DiffusionPriorNetwork")
        self.clip = _frozen_adapter(clip)
        if exists(self.clip) and not exists(config):
            kwargs.setdefault("image_embed_dim", self.clip.dim_latent)
            kwargs.setdefault("image_size", self.clip.image_size)
        if not exists(config) and "image_embed_dim" not in kwargs:
            raise ValueError("DiffusionPrior needs clip= or image_embed_dim= (the size of the CLIP embeddings)")
        self.config = c = DiffusionPriorConfig.build(config, owner="DiffusionPrior", net=net.config, **kwargs)
        if exists(self.clip):
            self._check_clip(self.clip)
        self.net = net
        self.diffusion = GaussianDiffusion.from_schedule(c.beta_schedule, c.timesteps, objective=c.objective)

    @classmethod
    def from_config(cls, config: DiffusionPriorConfig | dict, clip: CLIP | ClipAdapter | None = None) -> DiffusionPrior:
        """Rebuild from a config (the network's config included); the CLIP is passed in separately."""
        if isinstance(config, dict):
            config = DiffusionPriorConfig.from_dict(config)
        return cls(DiffusionPriorNetwork.from_config(config.net), clip=clip, config=config)

    def _check_clip(self, clip: ClipAdapter) -> None:
        c = self.config
        if clip.dim_latent != c.image_embed_dim:
            raise ValueError(f"the CLIP's embeddings have {clip.dim_latent} dims; this prior has image_embed_dim={c.image_embed_dim}")
        if clip.image_channels != c.image_channels:
            raise ValueError(f"the CLIP takes {clip.image_channels}-channel images; this prior has image_channels={c.image_channels}")
        if c.condition_on_text_encodings and clip.dim_text != c.net.dim:
            raise ValueError(
                f"the CLIP's text encodings are {clip.dim_text} wide but the prior network's dim is {c.net.dim}; "
                "make them equal or set condition_on_text_encodings=False"
            )
        if c.condition_on_text_encodings and clip.max_text_len > c.net.max_text_len:
            raise ValueError(
                f"the CLIP gives up to {clip.max_text_len} text tokens but the prior network has "
                f"max_text_len={c.net.max_text_len}"
            )

    @property
    def image_embed_scale(self) -> float:
        return default(self.config.image_embed_scale, self.config.image_embed_dim**0.5)

    @property
    def text_cond_drop_prob(self) -> float:
        return default(self.config.text_cond_drop_prob, self.config.cond_drop_prob)

    @property
    def image_cond_drop_prob(self) -> float:
        return default(self.config.image_cond_drop_prob, 0.0)

    def train(self, mode: bool = True) -> DiffusionPrior:
        super().train(mode)
        if exists(self.clip):
            self.clip.eval()  # frozen: never in training mode
        return self

    # ---- conditioning --------------------------------------------------------------------

    def _require_clip(self, what: str) -> ClipAdapter:
        if not exists(self.clip):
            raise ValueError(f"{what} needs a CLIP: build DiffusionPrior with clip=, or pass precomputed embeddings")
        return self.clip

    @torch.no_grad()
    def _embed_text(self, text: torch.Tensor | str | Sequence[str]):
        return self._require_clip("text").embed_text(text)

    def _text_cond(self, text, text_embed, text_encodings, text_mask) -> dict:
        """Network keywords from raw text (through CLIP) or precomputed embeddings."""
        if exists(text) == exists(text_embed):
            raise ValueError("pass exactly one of text (token ids or prompts, embedded by the CLIP) or text_embed")
        if exists(text):
            text_embed, text_encodings, text_mask, _ = self._embed_text(text)
        if not self.config.condition_on_text_encodings:
            return dict(text_embed=text_embed)
        if not exists(text_encodings):
            raise ValueError(
                "this prior conditions on text encodings (condition_on_text_encodings=True): pass text with a CLIP, "
                "or text_encodings with text_embed"
            )
        return dict(text_embed=text_embed, text_encodings=text_encodings, text_mask=text_mask)

    # ---- training ------------------------------------------------------------------------

    def forward(
        self,
        text: torch.Tensor | Sequence[str] | None = None,
        image: torch.Tensor | None = None,
        *,
        text_embed: torch.Tensor | None = None,
        image_embed: torch.Tensor | None = None,
        text_encodings: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean diffusion loss (Ho et al. 2020 eq. 14, on the configured objective) for a batch of pairs."""
        if exists(image) == exists(image_embed):
            raise ValueError("pass exactly one of image (embedded by the CLIP) or image_embed")
        cond = self._text_cond(text, text_embed, text_encodings, text_mask)
        if exists(image):
            with torch.no_grad():
                image_embed = self._require_clip("image").embed_image(image).image_embed
        if image_embed.ndim != 2 or image_embed.shape[1] != self.config.image_embed_dim:
            raise ValueError(f"image_embed must be (b, {self.config.image_embed_dim}), got {tuple(image_embed.shape)}")

        b, device = image_embed.shape[0], image_embed.device
        x_start = image_embed * self.image_embed_scale  # a new tensor: the caller's embedding is left as is
        t = self.diffusion.sample_timesteps(b, device=device)
        cond["cond_drop_mask"] = torch.rand(b, device=device) < self.text_cond_drop_prob
        if self.image_cond_drop_prob > 0:
            cond["image_drop_mask"] = torch.rand(b, device=device) < self.image_cond_drop_prob

        model = self.net
        if self.config.training_clamp_l2norm:
            model = lambda x, t, **kw: l2norm(self.net(x, t, **kw)) * self.image_embed_scale  # noqa: E731
        losses = self.diffusion.training_losses(model, x_start, t, model_kwargs=cond, loss_type=self.config.loss_type)
        return losses.mean()

    # ---- sampling ------------------------------------------------------------------------

    @torch.no_grad()
    def denoise(
        self,
        noise: torch.Tensor,
        *,
        text_embed: torch.Tensor,
        text_encodings: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        cond_scale: float = 1.0,
        steps: int | str | None = None,
        sampler: str = "ddpm",
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        on_step=None,
        uncond: TextCondition | None = None,
    ) -> torch.Tensor:
        """Denoise `noise` (b, d) into image embeddings in the *scaled* diffusion space (b, d), with any sampler.

        `on_step(i, total, x)` runs after every step (see `dalle2_core.diffusion.sample`). `uncond` (a negative
        prompt's text, b rows) takes the place of the learned null condition in guidance's unconditional branch.
        """
        if cond_scale != 1 and self.text_cond_drop_prob == 0 and uncond is None:
            raise ValueError(
                f"cond_scale={cond_scale} needs a prior trained with conditional dropout; this one has "
                "cond_drop_prob=0, so its null condition is untrained (use cond_scale=1)"
            )
        cond, negative = self._guidance_cond(text_embed, text_encodings, text_mask), None
        if uncond is not None:
            negative = self._guidance_cond(uncond.text_embed, uncond.text_encodings, uncond.text_mask)
            keep = torch.zeros(text_embed.shape[0], dtype=torch.bool, device=text_embed.device)  # no learned nulls
            cond["cond_drop_mask"] = negative["cond_drop_mask"] = keep
        scale = self.image_embed_scale
        denoise_fn = (lambda x0: l2norm(x0) * scale) if self.config.sampling_clamp_l2norm else None
        with eval_mode(self.net):
            # the text leads the causal sequence: its keys/values are encoded once, not at every step
            encode = lambda **c: dict(text_prefix=self.net.encode_text(**c))  # noqa: E731
            model = classifier_free_guidance(self.net, cond_scale, encode=encode, uncond=negative, **cond)
            steps = default(steps, self.config.sample_timesteps)
            x = sample(model, self.diffusion, noise, sampler=sampler, steps=steps, eta=eta, denoise_fn=denoise_fn,
                       generator=generator, on_step=on_step)
        if self.config.sampling_final_clamp_l2norm:
            x = l2norm(x) * scale
        return x

    def _guidance_cond(self, text_embed, text_encodings=None, text_mask=None) -> dict:
        cond = dict(text_embed=text_embed)
        if self.config.condition_on_text_encodings:
            cond.update(text_encodings=text_encodings, text_mask=text_mask)
        return cond

    @torch.no_grad()
    def sample_embeds(
        self,
        text_embed: torch.Tensor,
        text_encodings: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        *,
        num_samples_per_batch: int = 2,
        generator: torch.Generator | None = None,
        uncond: TextCondition | None = None,
        **sample_opts,
    ) -> torch.Tensor:
        """All candidates (b, num_samples_per_batch, d), unscaled, for precomputed text conditioning.

        `uncond`: a negative prompt's text (b rows) for guidance (see `denoise`)."""
        if num_samples_per_batch < 1:
            raise ValueError(f"num_samples_per_batch must be >= 1, got {num_samples_per_batch}")
        r = num_samples_per_batch
        repeat = lambda v: v.repeat_interleave(r, dim=0) if exists(v) else None  # noqa: E731  (b * r, ...)
        b, d = text_embed.shape[0], self.config.image_embed_dim
        noise = randn((b * r, d), generator=generator, device=text_embed.device, dtype=text_embed.dtype)
        x = self.denoise(
            noise,
            text_embed=repeat(text_embed),
            text_encodings=repeat(text_encodings),
            text_mask=repeat(text_mask),
            generator=generator,
            uncond=uncond.repeat_interleave(r) if exists(uncond) else None,
            **sample_opts,
        )
        return rearrange(x / self.image_embed_scale, "(b r) d -> b r d", r=r)

    @torch.no_grad()
    def sample(
        self,
        text: torch.Tensor | Sequence[str] | None = None,
        *,
        text_embed: torch.Tensor | None = None,
        text_encodings: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        num_samples_per_batch: int = 2,
        cond_scale: float = 1.0,
        steps: int | str | None = None,
        sampler: str = "ddpm",
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Image embeddings (b, d) for text: `num_samples_per_batch` candidates each, the most text-like kept.

        `generator` may be a list with one generator per text (its candidates' noise then does not
        depend on the rest of the batch).
        """
        cond = self._text_cond(text, text_embed, text_encodings, text_mask)
        candidates = self.sample_embeds(
            **cond,
            num_samples_per_batch=num_samples_per_batch,
            cond_scale=cond_scale,
            steps=steps,
            sampler=sampler,
            eta=eta,
            generator=generator,
        )
        return rerank_by_similarity(candidates, cond["text_embed"])


def _frozen_adapter(clip) -> ClipAdapter | None:
    """A raw CLIP wrapped in XClipAdapter; any adapter frozen and put in eval mode."""
    if clip is None:
        return None
    clip = as_clip_adapter(clip)
    clip.requires_grad_(False)
    return clip.eval()
