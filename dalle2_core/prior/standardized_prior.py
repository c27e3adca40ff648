"""StandardizedPrior: the diffusion prior of Karlo and Kandinsky 2.2, which diffuses CLIP image embeddings standardised
per feature.

The prior (DALL-E 2 sec. 2.2 with Karlo's choices, which Kandinsky 2.2 kept) predicts x_0 in a standardised CLIP space:
an image embedding e is diffused as (e - clip_mean) / clip_std, with the statistics stored beside the
network, and the sampled x_0 is mapped back as x · clip_std + clip_mean. Embeddings are CLIP's
unnormalised projections. Guidance takes its unconditional branch from the empty prompt's CLIP text
encoding (Karlo learns no null text condition), which the caller computes and passes as `uncond`.
"""

from __future__ import annotations

from dataclasses import field

import torch
from einops import rearrange
from torch import nn

from dalle2_core.conditioning import TextCondition
from dalle2_core.config import Config, config_dataclass
from dalle2_core.diffusion import DiffusionConfig, classifier_free_guidance, sample
from dalle2_core.helpers import default, eval_mode, exists, randn
from dalle2_core.prior.prior import rerank_by_similarity
from dalle2_core.prior.prior_transformer import PriorTransformer, PriorTransformerConfig


def unclip_prior_diffusion() -> DiffusionConfig:
    """The numerics of diffusers' `UnCLIPScheduler` for a prior (Karlo's, Kandinsky's): x_0 prediction, float32 betas,
    fixed_small_log variance; the family's config adds its x_0 clamp and default steps."""
    return DiffusionConfig(objective="x0", float32_schedule=True, posterior_log_variance="unclipped")


@config_dataclass
class StandardizedPriorConfig(Config):
    net: PriorTransformerConfig = field(default_factory=PriorTransformerConfig)
    diffusion: DiffusionConfig = field(default_factory=unclip_prior_diffusion)


class StandardizedPrior(nn.Module):
    """A `PriorTransformer`, its diffusion and the CLIP statistics (`clip_mean`, `clip_std`)."""

    def __init__(self, net: PriorTransformer | None = None, config: StandardizedPriorConfig | dict | None = None, **kwargs):
        super().__init__()
        if exists(net):
            if not isinstance(net, PriorTransformer):
                raise TypeError(f"net must be a PriorTransformer, got {type(net).__name__}")
            kwargs["net"] = net.config
        unknown = sorted(set(kwargs) - {"net", "diffusion"})
        if unknown:
            raise TypeError(f"StandardizedPrior got unknown option(s) {unknown}; accepted: net, diffusion")
        self.config = c = StandardizedPriorConfig.build(
            default(config, StandardizedPriorConfig), owner="StandardizedPrior", **kwargs
        )  # the network's defaults are Karlo v1-alpha's widths; each family's converter gives its own config
        self.net = net if exists(net) else PriorTransformer(c.net)
        self.diffusion = c.diffusion.to_diffusion()
        self.register_buffer("clip_mean", torch.zeros(c.net.embed_dim))
        self.register_buffer("clip_std", torch.ones(c.net.embed_dim))

    @classmethod
    def from_config(cls, config: StandardizedPriorConfig | dict) -> StandardizedPrior:
        """Rebuild (untrained, statistics 0 / 1) from a saved config; load the weights with `load_state_dict`."""
        return cls(config=config)

    def standardize(self, image_embed: torch.Tensor) -> torch.Tensor:
        return (image_embed - self.clip_mean) / self.clip_std

    def unstandardize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.clip_std + self.clip_mean

    @torch.no_grad()
    def sample_embeds(
        self,
        text_embed: torch.Tensor,
        text_encodings: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        *,
        num_samples_per_batch: int = 1,
        cond_scale: float = 4.0,
        steps: int | str | None = None,
        sampler: str = "ddpm",
        generator=None,
        uncond: TextCondition | None = None,
        on_step=None,
    ) -> torch.Tensor:
        """All candidates (b, num_samples_per_batch, embed_dim): CLIP image embeddings in CLIP's own scale.

        `uncond`: the empty prompt's text — or a negative prompt's —, 1 row or b; required when `cond_scale != 1`.
        `steps` default: the config's `sample_steps`. `generator`: one generator, or one per prompt (its candidates'
        noise is then drawn from it). `on_step(i, total, x)` runs after every step.
        """
        if isinstance(num_samples_per_batch, bool) or not isinstance(num_samples_per_batch, int) or num_samples_per_batch < 1:
            raise ValueError(f"num_samples_per_batch must be an int >= 1, got {num_samples_per_batch!r}")
        r, b = num_samples_per_batch, text_embed.shape[0]
        cond = TextCondition(text_embed, text_encodings, text_mask).with_mask()
        rows = cond.repeat_interleave(r).tensors()  # (b · r, ...)
        if float(cond_scale) == 1.0:
            model = lambda x, t: self.net(x, t, **rows)  # noqa: E731
        else:
            if not exists(uncond):
                raise ValueError(f"cond_scale={cond_scale} needs uncond: the empty prompt's TextCondition")
            empty = uncond.expand(b, "uncond")
            empty = empty._replace(text_mask=default(empty.text_mask, lambda: torch.ones_like(cond.text_mask)))
            model = classifier_free_guidance(self.net, cond_scale, uncond=empty.repeat_interleave(r).tensors(), **rows)
        noise = randn((b * r, self.config.net.embed_dim), generator=generator, device=text_embed.device, dtype=text_embed.dtype)
        with eval_mode(self.net):
            x = sample(
                model, self.diffusion, noise, sampler=sampler, steps=default(steps, self.config.diffusion.sample_steps),
                denoise_fn=self.config.diffusion.denoise_fn(), generator=generator, on_step=on_step,
            )
        return rearrange(self.unstandardize(x), "(b r) d -> b r d", r=r)

    @torch.no_grad()
    def sample(self, text_embed: torch.Tensor, text_encodings: torch.Tensor, text_mask: torch.Tensor | None = None, **opts) -> torch.Tensor:
        """One image embedding per prompt (b, embed_dim): of `num_samples_per_batch` candidates, the one whose
        direction is closest to the text embedding (DALL-E 2 sec. 2.2)."""
        return rerank_by_similarity(self.sample_embeds(text_embed, text_encodings, text_mask, **opts), text_embed)


__all__ = ["StandardizedPrior", "StandardizedPriorConfig", "unclip_prior_diffusion"]
