"""unCLIP end to end (Ramesh et al. 2022): text -> prior -> CLIP image embedding -> decoder -> image.

Also the paper's manipulations of the embedding space (Sec. 3): image variations (decode an image's
own CLIP embedding again, Sec. 3.1) and interpolation between two embeddings by slerp (Sec. 3.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dalle2_core.clip.adapter import ClipAdapter
from dalle2_core.clip.xclip_adapter import as_clip_adapter
from dalle2_core.decoder.decoder import Decoder
from dalle2_core.helpers import exists, l2norm
from dalle2_core.prior.prior import DiffusionPrior


def _is_strings(text) -> bool:
    return isinstance(text, str) or (
        isinstance(text, (list, tuple)) and len(text) > 0 and all(isinstance(t, str) for t in text)
    )


def to_pil_images(images: torch.Tensor) -> list:
    """(b, c, h, w) images in [0, 1] as PIL images."""
    from torchvision.transforms.functional import to_pil_image

    return [to_pil_image(img) for img in images.detach().float().clamp(0.0, 1.0).cpu()]


class DALLE2(nn.Module):
    """Text to image with a diffusion prior and a cascaded decoder (unCLIP, Ramesh et al. 2022, Fig. 2)."""

    def __init__(self, *, prior: DiffusionPrior, decoder: Decoder, prior_num_samples: int = 2):
        super().__init__()
        if not isinstance(prior, DiffusionPrior):
            raise TypeError(f"prior must be a DiffusionPrior, got {type(prior).__name__}")
        if not isinstance(decoder, Decoder):
            raise TypeError(f"decoder must be a Decoder, got {type(decoder).__name__}")
        if prior_num_samples < 1:
            raise ValueError(f"prior_num_samples must be >= 1, got {prior_num_samples}")
        self.prior = prior
        self.decoder = decoder
        self.prior_num_samples = prior_num_samples

    @property
    def clip(self) -> ClipAdapter | None:
        """The CLIP used for prompts: the prior's, else the decoder's."""
        return self.prior.clip if exists(self.prior.clip) else self.decoder.clip

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        if not exists(self.clip):
            raise ValueError("prompts need a CLIP on the prior or the decoder to tokenize them; pass token ids instead")
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.clip.tokenize(texts).to(self.clip.device)

    @torch.no_grad()
    def forward(
        self,
        text: str | Sequence[str] | torch.Tensor,
        cond_scale: float | tuple[float, ...] = 1.0,
        prior_cond_scale: float = 1.0,
        return_pil_images: bool = False,
        *,
        sampler: str = "ddpm",
        steps: int | str | tuple | None = None,
        prior_steps: int | str | None = None,
        generator: torch.Generator | None = None,
        on_step=None,
    ):
        """Images (b, c, H, W) in [0, 1] (or PIL images) for prompts or token ids (b, n)."""
        tokens = self.tokenize(text) if _is_strings(text) else text
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
            raise ValueError(f"text must be a prompt, a list of prompts or token ids (b, n); got {type(text).__name__}")
        was_training = self.training
        self.eval()
        try:
            image_embed = self.prior.sample(
                text=tokens,
                num_samples_per_batch=self.prior_num_samples,
                cond_scale=prior_cond_scale,
                steps=prior_steps,
                sampler=sampler,
                generator=generator,
            )
            text_cond = {}
            if self.decoder.condition_on_text_encodings:
                if exists(self.decoder.clip):
                    text_cond["text"] = tokens
                else:  # the decoder has no CLIP of its own: encode the text with the prior's
                    _, text_cond["text_encodings"], text_cond["text_mask"] = self.clip.embed_text(tokens)
            images = self.decoder.sample(
                image_embed=image_embed,
                cond_scale=cond_scale,
                sampler=sampler,
                steps=steps,
                generator=generator,
                on_step=on_step,
                **text_cond,
            )
        finally:
            self.train(was_training)
        return to_pil_images(images) if return_pil_images else images


@torch.no_grad()
def image_variations(
    decoder: Decoder, images: torch.Tensor, clip: ClipAdapter | None = None, num_variations: int = 1, **sample_kwargs
) -> torch.Tensor:
    """unCLIP Sec. 3.1: decode each image's CLIP embedding again; (b * num_variations, c, H, W) in [0, 1].

    The variations of image i are rows i * num_variations ... (i + 1) * num_variations - 1.
    `sample_kwargs` go to `decoder.sample` (cond_scale, sampler, steps, generator, text, ...).
    """
    clip = as_clip_adapter(clip) if exists(clip) else decoder.clip
    if not exists(clip):
        raise ValueError("image variations need a CLIP: pass clip= or use a decoder that holds one")
    if num_variations < 1:
        raise ValueError(f"num_variations must be >= 1, got {num_variations}")
    image_embed = clip.embed_image(images).image_embed.repeat_interleave(num_variations, dim=0)  # (b * n, d)
    return decoder.sample(image_embed=image_embed, **sample_kwargs)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between l2-normalised embeddings (Shoemake 1985; unCLIP Sec. 3.2).

    `a`, `b` are (..., d); `t` in [0, 1] is a float or broadcasts against (...,). Rows whose ends
    (nearly) coincide fall back to linear interpolation; the result is renormalised.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs embeddings of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = l2norm(a), l2norm(b)
    t = torch.as_tensor(t, device=a.device, dtype=a.dtype)
    t = t[..., None] if t.ndim > 0 else t  # (..., 1) against (..., d)
    cos = (a * b).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    near = sin.abs() < 1e-3  # float32 arccos can't resolve smaller angles; lerp is within 1e-7 there
    safe_sin = torch.where(near, torch.ones_like(sin), sin)
    out = torch.where(
        near,
        (1 - t) * a + t * b,
        (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / safe_sin,
    )
    return l2norm(out)


@torch.no_grad()
def interpolate(
    decoder: Decoder,
    image_embed_a: torch.Tensor,
    image_embed_b: torch.Tensor,
    num_frames: int = 8,
    *,
    seed: int = 0,
    **sample_kwargs,
) -> torch.Tensor:
    """unCLIP Sec. 3.2: frames (num_frames, b, c, H, W) decoded along slerp(a, b, t), t = 0 .. 1.

    Every frame starts from the same noise (a generator reseeded with `seed`), so only the
    embedding changes along the path.
    """
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2 (both ends included), got {num_frames}")
    if "generator" in sample_kwargs:
        raise ValueError("interpolate reseeds its own generator per frame; pass seed= instead of generator=")
    device = image_embed_a.device
    frames = []
    for i in range(num_frames):
        embed = slerp(image_embed_a, image_embed_b, i / (num_frames - 1))
        generator = torch.Generator(device=device).manual_seed(seed)
        frames.append(decoder.sample(image_embed=embed, generator=generator, **sample_kwargs))
    return torch.stack(frames)


__all__ = ["DALLE2", "image_variations", "interpolate", "slerp", "to_pil_images"]
