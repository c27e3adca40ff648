"""DALLE2-pytorch 1.0-1.1 (LAION) state-dict names and shapes onto this project's prior network and Unet.

Every key of a source state dict is either mapped, checked and dropped (noise-schedule buffers,
rotary frequencies, zero LayerNorm biases, nulls of conditions a module does not take), or an error:
nothing is silently ignored, unlike a `strict=False` load.
"""

from __future__ import annotations

import re

import torch

from dalle2_core.convert.materialize import check_state, few
from dalle2_core.diffusion import GaussianDiffusion
from dalle2_core.helpers import exists

# 1.1.0 stores its unet stages as positional ModuleLists; these are the names of the same slots here
DOWN_PARTS = ("pre_downsample", "init_block", "resnet_blocks", "attn", "post_downsample")
UP_PARTS = ("init_block", "resnet_blocks", "attn", "upsample")
# 1.1.0 builds every null token whether or not its condition is used; here they exist only when used
UNET_UNUSED_NULLS = ("null_text_embed", "null_image_embed", "null_image_hiddens")
# the 13 noise-schedule tables every 1.1.0 NoiseScheduler registers (float32 copies of float64 maths)
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "p2_loss_weight",
)


def split_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def rename_layernorm_gamma(state: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Older files' LayerNorm `gamma` (gain) and `beta` (a zero buffer) as 1.1.0's bias-free `g`."""
    out = {}
    for key, value in state.items():
        if key.endswith(".beta"):
            if value.is_floating_point() and not value.is_meta and bool(value.abs().max() > 0):
                raise ValueError(
                    f"{what}: LayerNorm bias {key} is non-zero; only the bias-free LayerNorm of DALLE2-pytorch is supported"
                )
            continue
        out[key[: -len("gamma")] + "g" if key.endswith(".gamma") else key] = value
    return out


def check_schedule(buffers: dict[str, torch.Tensor], diffusion: GaussianDiffusion, what: str) -> None:
    """The file's noise-schedule tables must be the ones the converted config computes."""
    unknown = set(buffers) - set(SCHEDULE_BUFFERS)
    if unknown:
        raise ValueError(f"{what}: unknown noise-schedule buffers {few(unknown)}; expected {', '.join(SCHEDULE_BUFFERS)}")
    betas = buffers.get("betas")
    if not exists(betas):
        return
    if betas.shape != (diffusion.num_timesteps,):
        raise ValueError(
            f"{what}: the file's noise schedule has {betas.numel()} steps but its config gives {diffusion.num_timesteps}"
        )
    if betas.is_meta:  # structure only
        return
    error = (betas.double() - diffusion.betas).abs().max().item()
    if error > 1e-6:
        raise ValueError(f"{what}: the file's betas differ from its config's schedule by up to {error:.2e}")


def schedule_length(buffers: dict[str, torch.Tensor]) -> int | None:
    betas = buffers.get("betas")
    return int(betas.shape[0]) if exists(betas) else None


def check_rotary_freqs(freqs: torch.Tensor, dim: int, what: str, theta: float = 10000.0) -> None:
    """rotary-embedding-torch stored its fixed frequencies; this project computes them: they must agree."""
    expected = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    if freqs.shape != expected.shape:
        raise ValueError(f"{what}: rotary frequencies have shape {tuple(freqs.shape)}, expected {tuple(expected.shape)}")
    if not freqs.is_meta and not torch.allclose(freqs.double(), expected, rtol=1e-6, atol=0):
        raise ValueError(f"{what}: rotary frequencies are not theta=10000 RoFormer frequencies (learned rotary is not supported)")


def prior_net_state(state: dict[str, torch.Tensor], rotary_dim: int, what: str = "prior") -> dict[str, torch.Tensor]:
    """A 1.1.0 `DiffusionPriorNetwork` state dict under this project's names.

    `null_text_embed` (per-position padding tokens) is `null_text_encodings` here; the rotary
    frequencies (one copy per layer) are checked and dropped, since they are computed on the fly.
    """
    out = {}
    for key, value in rename_layernorm_gamma(state, what).items():
        if key.endswith("rotary_emb.freqs"):
            check_rotary_freqs(value, rotary_dim, f"{what} {key}")
            continue
        out["null_text_encodings" if key == "null_text_embed" else key] = value
    return out


def unet_key(key: str) -> str:
    """A 1.1.0 Unet key under this project's names.

    `downs.1.2.0.cross_attn.fn.to_q.weight` -> `downs.1.resnet_blocks.0.cross_attn.attn.to_q.weight`.
    """
    key = re.sub(r"^downs\.(\d+)\.(\d)\.", lambda m: f"downs.{m[1]}.{DOWN_PARTS[int(m[2])]}.", key)
    key = re.sub(r"^ups\.(\d+)\.(\d)\.", lambda m: f"ups.{m[1]}.{UP_PARTS[int(m[2])]}.", key)
    # EinopsToAndFrom(Residual(Attention)) -> .fn.fn. ; EinopsToAndFrom(CrossAttention) -> cross_attn.fn. ;
    # Residual(LinearAttention) -> attn.fn.
    key = key.replace(".fn.fn.", ".attn.")
    key = key.replace("cross_attn.fn.", "cross_attn.attn.").replace("attn.fn.", "attn.")
    return re.sub(r"\.g$", ".weight", key)


def unet_state(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str = "unet"
) -> dict[str, torch.Tensor]:
    """A 1.1.0 Unet state dict mapped onto `expected` (this project's Unet state dict, e.g. on meta).

    LayerNorm gains `g` become `weight` ((1, c, 1, 1) channel-norm gains flattened to (c,)); the null
    tokens of conditions this unet does not take are dropped. Anything else that does not line up
    (missing, unexpected or differently shaped) is an error naming the keys.
    """
    out = {}
    for key, value in rename_layernorm_gamma(state, what).items():
        new = unet_key(key)
        if new not in expected and key in UNET_UNUSED_NULLS:
            continue
        out[new] = value.reshape(-1) if key.endswith(".g") else value
    check_state(out, expected, what)
    return out


__all__ = [
    "DOWN_PARTS",
    "SCHEDULE_BUFFERS",
    "UP_PARTS",
    "check_rotary_freqs",
    "check_schedule",
    "prior_net_state",
    "rename_layernorm_gamma",
    "schedule_length",
    "split_prefix",
    "unet_key",
    "unet_state",
]
