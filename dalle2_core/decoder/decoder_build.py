"""What a `Decoder` is built from: the unets and VQ-GANs as given or rebuilt from a saved config, and the CLIP
frozen behind an adapter (its image size the default output size)."""

from __future__ import annotations

from dalle2_core.clip.adapter import ClipAdapter
from dalle2_core.clip.xclip_adapter import as_clip_adapter
from dalle2_core.decoder.decoder_config import DecoderConfig
from dalle2_core.decoder.unet import Unet
from dalle2_core.helpers import cast_tuple, default, exists
from dalle2_core.vqgan.vae import VQGanVAE


def networks_and_config(unet, vae, config, kwargs: dict) -> tuple[tuple[Unet, ...], tuple, DecoderConfig]:
    """The unets and VQ-GANs (None = pixel stage) as given, or rebuilt from a saved config, and the config."""
    if exists(unet):
        unets = cast_tuple(unet)
        for i, u in enumerate(unets):
            if not isinstance(u, Unet):
                raise TypeError(f"unet {i + 1} must be a dalle2_core Unet, got {type(u).__name__}")
        vaes = tuple(v.copy_for_eval() if isinstance(v, VQGanVAE) else None for v in cast_tuple(default(vae, ())))
        if len(vaes) > len(unets):
            raise ValueError(f"{len(vaes)} VQ-GAN VAEs given for {len(unets)} unet(s)")
        vaes += (None,) * (len(unets) - len(vaes))
        kwargs = dict(kwargs, unets=tuple(u.config for u in unets), vaes=tuple(v.config if exists(v) else None for v in vaes))
    cfg = DecoderConfig.build(config, owner="Decoder", **kwargs)
    if not cfg.unets:
        raise ValueError("Decoder needs unet= (one Unet or a tuple, lowest resolution first)")
    if not exists(unet):  # rebuilding from a saved config
        unets = tuple(Unet.from_config(c) for c in cfg.unets)
        vaes = tuple(VQGanVAE.from_config(c) if exists(c) else None for c in cfg.vaes)
    return unets, vaes, cfg


def frozen_clip(clip, cfg: DecoderConfig) -> tuple[ClipAdapter | None, DecoderConfig]:
    """The CLIP as a frozen adapter, and the config with the CLIP's image size when none was given."""
    if not exists(clip):
        if not cfg.image_sizes:
            raise ValueError("give image_size, image_sizes, or a clip (whose image size is then used)")
        return None, cfg
    if cfg.conditioning.unconditional:
        raise ValueError("clip must not be given to an unconditional decoder")
    adapter = as_clip_adapter(clip).eval().requires_grad_(False)
    if adapter.image_channels != cfg.channels:
        raise ValueError(f"channels={cfg.channels} but the CLIP takes {adapter.image_channels}-channel images")
    if not cfg.image_sizes:  # default: generate at the CLIP's resolution
        size = cast_tuple(adapter.image_size)
        if len(set(size)) != 1:
            raise ValueError(f"the CLIP's image size {size} is not square; pass image_sizes")
        cfg = DecoderConfig.build(cfg, image_sizes=(size[0],))
    return adapter, cfg
