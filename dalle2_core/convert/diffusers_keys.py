"""diffusers state-dict names of Karlo's networks onto this project's modules.

One explicit table per network. Every source key must match a rule and land on a key of the target
module's state dict with the same shape (`laion_keys.check_state`): nothing is dropped or guessed,
unlike a `strict=False` load. The maps cover the network weights only; reading the diffusers folder is
the converter's job.

    PriorTransformer      -> StandardizedPrior   (`net.*`, plus the CLIP statistics clip_mean / clip_std)
    UnCLIPTextProjModel   -> TextProj
    UNet2DConditionModel  -> AdmUnet             (Karlo's decoder)
    UNet2DModel           -> AdmUnet             (super_res_first, super_res_last)
"""

from __future__ import annotations

import re

import torch

from dalle2_core.convert.materialize import check_state

# PriorTransformer: exact names, then the per-block names under transformer_blocks.{i}.
PRIOR_KEYS = {
    "time_embedding.linear_1": "net.time_embed.linear_1",
    "time_embedding.linear_2": "net.time_embed.linear_2",
    "proj_in": "net.image_embed_proj",
    "embedding_proj": "net.text_embed_proj",
    "encoder_hidden_states_proj": "net.text_states_proj",
    "positional_embedding": "net.pos_embed",
    "prd_embedding": "net.readout",
    "norm_out": "net.norm_out",
    "proj_to_clip_embeddings": "net.proj_out",
    "clip_mean": "clip_mean",  # (1, d) in diffusers, (d,) here
    "clip_std": "clip_std",
}
PRIOR_BLOCK_KEYS = {
    "norm1": "attn_norm",
    "attn1.to_q": "attn.to_q",
    "attn1.to_k": "attn.to_k",
    "attn1.to_v": "attn.to_v",
    "attn1.to_out.0": "attn.to_out",
    "norm3": "ff_norm",
    "ff.net.0.proj": "ff_in",
    "ff.net.2": "ff_out",
}
PRIOR_FLATTENED = ("clip_mean", "clip_std")
TEXT_PROJ_KEYS = {
    "learned_classifier_free_guidance_embeddings": "null_image_embed",
    "embedding_proj": "text_embed_to_time",
    "clip_image_embeddings_project_to_time_embeddings": "image_embed_to_time",
    "clip_extra_context_tokens_proj": "image_embed_to_tokens",
    "encoder_hidden_states_proj": "text_states_proj",
    "text_encoder_hidden_states_norm": "text_states_norm",
}
UNET_KEYS = {
    "time_embedding.linear_1": "time_embed.linear_1",
    "time_embedding.linear_2": "time_embed.linear_2",
    "conv_in": "conv_in",
    "conv_norm_out": "norm_out",
    "conv_out": "conv_out",
}
# block paths: (pattern, replacement); the rest of the key is a resnet or attention leaf below
UNET_BLOCKS = (
    (r"down_blocks\.(\d+)\.resnets\.(\d+)", r"downs.\1.resnets.\2", "resnet"),
    (r"down_blocks\.(\d+)\.attentions\.(\d+)", r"downs.\1.attentions.\2", "attention"),
    (r"down_blocks\.(\d+)\.downsamplers\.0", r"downs.\1.resample", "resnet"),
    (r"up_blocks\.(\d+)\.resnets\.(\d+)", r"ups.\1.resnets.\2", "resnet"),
    (r"up_blocks\.(\d+)\.attentions\.(\d+)", r"ups.\1.attentions.\2", "attention"),
    (r"up_blocks\.(\d+)\.upsamplers\.0", r"ups.\1.resample", "resnet"),
    (r"mid_block\.resnets\.0", "mid.resnet_1", "resnet"),
    (r"mid_block\.resnets\.1", "mid.resnet_2", "resnet"),
    (r"mid_block\.attentions\.0", "mid.attention", "attention"),
)
UNET_LEAVES = {
    "resnet": {
        "norm1": "norm1", "conv1": "conv1", "time_emb_proj": "time_proj", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "skip",
    },
    "attention": {
        "group_norm": "norm", "to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "add_k_proj": "context_to_k",
        "add_v_proj": "context_to_v", "to_out.0": "to_out",
    },
}
PARAM_SUFFIX = re.compile(r"(.+)\.(weight|bias)")


def _renamed(key: str, table: dict[str, str]) -> str | None:
    """`table[module] + suffix` for a `module.weight` / `module.bias` key (or a bare parameter name)."""
    if key in table:
        return table[key]
    m = PARAM_SUFFIX.fullmatch(key)
    if m and m[1] in table:
        return f"{table[m[1]]}.{m[2]}"
    return None


def _unknown(key: str, what: str) -> ValueError:
    return ValueError(f"{what}: no rule maps the diffusers key {key!r}")


def prior_key(key: str, what: str = "prior") -> str:
    """`transformer_blocks.3.attn1.to_out.0.weight` -> `net.blocks.3.attn.to_out.weight`."""
    new = _renamed(key, PRIOR_KEYS)
    m = re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", key)
    if new is None and m:
        leaf = _renamed(m[2], PRIOR_BLOCK_KEYS)
        new = f"net.blocks.{m[1]}.{leaf}" if leaf else None
    if new is None:
        raise _unknown(key, what)
    return new


def text_proj_key(key: str, what: str = "text_proj") -> str:
    new = _renamed(key, TEXT_PROJ_KEYS)
    if new is None:
        raise _unknown(key, what)
    return new


def unet_key(key: str, what: str = "unet") -> str:
    """`down_blocks.1.attentions.0.add_k_proj.weight` -> `downs.1.attentions.0.context_to_k.weight`."""
    new = _renamed(key, UNET_KEYS)
    if new is not None:
        return new
    for pattern, replacement, kind in UNET_BLOCKS:
        m = re.match(pattern + r"\.(.+)", key)
        if m:
            leaf = _renamed(m[m.re.groups], UNET_LEAVES[kind])
            if leaf:
                return f"{m.expand(replacement)}.{leaf}"
    raise _unknown(key, what)


def _mapped(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], rename, what: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        new = rename(key, what)
        if new in out:
            raise ValueError(f"{what}: two diffusers keys map onto {new!r}")
        out[new] = value
    check_state(out, expected, what)
    return out


def prior_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str = "prior") -> dict[str, torch.Tensor]:
    """A diffusers `PriorTransformer` state dict as a `StandardizedPrior` state dict (`expected`, e.g. on meta)."""
    state = {k: v.reshape(-1) if k in PRIOR_FLATTENED else v for k, v in state.items()}
    return _mapped(state, expected, prior_key, what)


def text_proj_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str = "text_proj") -> dict[str, torch.Tensor]:
    """A diffusers `UnCLIPTextProjModel` state dict as a `TextProj` state dict."""
    return _mapped(state, expected, text_proj_key, what)


def unet_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str = "unet") -> dict[str, torch.Tensor]:
    """A diffusers `UNet2DConditionModel` / `UNet2DModel` state dict as an `AdmUnet` state dict."""
    return _mapped(state, expected, unet_key, what)


def cascade_state(parts: dict[str, dict[str, torch.Tensor]], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The four diffusers components (text_proj, decoder, super_res_first, super_res_last) as a `KarloCascade` state dict."""
    names = ("text_proj", "decoder", "super_res_first", "super_res_last")
    if sorted(parts) != sorted(names):
        raise ValueError(f"a Karlo cascade needs the components {', '.join(names)}; got {', '.join(sorted(parts))}")
    out = {}
    for name in names:
        sub = {k[len(name) + 1:]: v for k, v in expected.items() if k.startswith(name + ".")}
        mapping = text_proj_state if name == "text_proj" else unet_state
        out.update({f"{name}.{k}": v for k, v in mapping(parts[name], sub, what=name).items()})
    return out


__all__ = [
    "PRIOR_BLOCK_KEYS",
    "PRIOR_KEYS",
    "TEXT_PROJ_KEYS",
    "UNET_BLOCKS",
    "UNET_KEYS",
    "UNET_LEAVES",
    "cascade_state",
    "prior_key",
    "prior_state",
    "text_proj_key",
    "text_proj_state",
    "unet_key",
    "unet_state",
]
