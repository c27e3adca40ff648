"""A tiny CLIP + prior + two-unet decoder, saved as a model folder, for checkpoint and CLI tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from dalle2_core.checkpoint import save_model
from dalle2_core.clip import CLIP
from dalle2_core.decoder import Decoder, Unet
from dalle2_core.prior import DiffusionPrior, DiffusionPriorNetwork

TEXT_SEQ_LEN = 16  # short, so a long prompt is truncated
DEFAULTS = {"steps": (3, 2), "prior_steps": 3, "cond_scale": (2.0, 1.0), "sampler": "ddim"}


def tiny_modules(seed: int = 0) -> tuple[CLIP, DiffusionPrior, Decoder]:
    torch.manual_seed(seed)
    clip = CLIP(
        dim_text=16, dim_image=16, dim_latent=16, num_text_tokens=49408, text_enc_depth=1,
        text_seq_len=TEXT_SEQ_LEN, text_heads=2, visual_enc_depth=1, visual_image_size=16,
        visual_patch_size=8, visual_heads=2,
    )
    net = DiffusionPriorNetwork(dim=16, depth=1, dim_head=8, heads=2)
    prior = DiffusionPrior(net=net, clip=clip, timesteps=10, cond_drop_prob=0.2)
    unets = tuple(Unet(dim=8, image_embed_dim=16, cond_dim=16, channels=3, dim_mults=(1, 2)) for _ in range(2))
    decoder = Decoder(unet=unets, clip=clip, image_sizes=(16, 32), timesteps=10)
    # random weights everywhere, so a round trip that dropped or mixed up tensors would show
    with torch.no_grad():
        for module in (prior.net, decoder.unets):
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    return clip, prior, decoder


def save_tiny_model(folder: Path, seed: int = 0) -> Path:
    clip, prior, decoder = tiny_modules(seed)
    return save_model(folder, clip=clip, prior=prior, decoder=decoder, defaults=DEFAULTS)


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
