"""diffusers state-dict names of Kandinsky 2.2's U-Nets and MoVQ onto this project's modules.

    UNet2DConditionModel (decoder, decoder-inpaint)  -> AdmUnet   (Karlo's U-Net table, plus the image conditioning)
    VQModel (movq)                                    -> MoVQ
    PriorTransformer                                  -> StandardizedPrior   (`convert.diffusers_keys.prior_key`)

Every source key must match a rule; `convert.materialize` then checks that each lands once on a key of the
module with the same shape.
"""

from __future__ import annotations

import re

from dalle2_core.convert import diffusers_keys as dk

# diffusers' ImageProjection (encoder_hid_proj) and ImageTimeEmbedding (add_embedding) -> adm.ImageConditioning
UNET_IMAGE_KEYS = {
    "encoder_hid_proj.image_embeds": "image_conditioning.to_tokens",
    "encoder_hid_proj.norm": "image_conditioning.tokens_norm",
    "add_embedding.image_proj": "image_conditioning.to_time",
    "add_embedding.image_norm": "image_conditioning.time_norm",
}
MOVQ_KEYS = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_norm_out": "encoder.norm_out",
    "encoder.conv_out": "encoder.conv_out",
    "quant_conv": "quant_conv",
    "quantize.embedding": "codebook",
    "post_quant_conv": "post_quant_conv",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_out": "decoder.conv_out",
}
# block paths: (pattern, replacement, leaf table)
MOVQ_BLOCKS = (
    (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)", r"encoder.downs.\1.resnets.\2", "resnet"),
    (r"encoder\.down_blocks\.(\d+)\.attentions\.(\d+)", r"encoder.downs.\1.attentions.\2", "attention"),
    (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.downs.\1.resample", "resample"),
    (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)", r"decoder.ups.\1.resnets.\2", "resnet"),
    (r"decoder\.up_blocks\.(\d+)\.attentions\.(\d+)", r"decoder.ups.\1.attentions.\2", "attention"),
    (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0", r"decoder.ups.\1.resample", "resample"),
    (r"(encoder|decoder)\.mid_block\.resnets\.0", r"\1.mid.resnet_1", "resnet"),
    (r"(encoder|decoder)\.mid_block\.resnets\.1", r"\1.mid.resnet_2", "resnet"),
    (r"(encoder|decoder)\.mid_block\.attentions\.0", r"\1.mid.attention", "attention"),
    (r"decoder\.conv_norm_out", "decoder.norm_out", "spatial_norm"),
)


def _spatial(source: str, target: str) -> dict[str, str]:
    """A GroupNorm or a SpatialNorm at `source` (its GroupNorm is `norm_layer` in diffusers, `norm` here)."""
    return {source: target, f"{source}.norm_layer": f"{target}.norm", f"{source}.conv_y": f"{target}.conv_y",
            f"{source}.conv_b": f"{target}.conv_b"}


MOVQ_LEAVES = {
    "resnet": {**_spatial("norm1", "norm1"), **_spatial("norm2", "norm2"), "conv1": "conv1", "conv2": "conv2", "conv_shortcut": "skip"},
    "attention": {
        **_spatial("group_norm", "norm"), **_spatial("spatial_norm", "norm"), "to_q": "to_q", "to_k": "to_k", "to_v": "to_v",
        "to_out.0": "to_out",
    },
    "resample": {"conv": "conv"},
    "spatial_norm": {"norm_layer": "norm", "conv_y": "conv_y", "conv_b": "conv_b"},  # the block is the norm itself
}


def unet_key(key: str, what: str = "unet") -> str:
    """`add_embedding.image_proj.weight` -> `image_conditioning.to_time.weight`; the rest as Karlo's U-Net."""
    return dk._renamed(key, UNET_IMAGE_KEYS) or dk.unet_key(key, what)


def movq_key(key: str, what: str = "movq") -> str:
    """`decoder.up_blocks.1.resnets.0.norm1.norm_layer.weight` -> `decoder.ups.1.resnets.0.norm1.norm.weight`."""
    new = dk._renamed(key, MOVQ_KEYS)
    if new is not None:
        return new
    for pattern, replacement, kind in MOVQ_BLOCKS:
        m = re.match(pattern + r"\.(.+)", key)
        if m:
            leaf = dk._renamed(m[m.re.groups], MOVQ_LEAVES[kind])
            if leaf:
                return f"{m.expand(replacement)}.{leaf}"
    raise ValueError(f"{what}: no rule maps the diffusers key {key!r}")


__all__ = ["MOVQ_BLOCKS", "MOVQ_KEYS", "MOVQ_LEAVES", "UNET_IMAGE_KEYS", "movq_key", "unet_key"]
