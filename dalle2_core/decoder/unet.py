"""The decoder U-Net of unCLIP (Ramesh et al. 2022, Sec. 2.1), laid out as DALLE2-pytorch 1.1.0.

Conditioning path: the timestep becomes a FiLM vector (`to_time_hiddens` -> `to_time_cond`) and
`num_time_tokens` cross-attention tokens; the CLIP image embedding becomes `num_image_tokens` tokens
and is also added to the FiLM vector; text encodings are projected to `cond_dim` and, as in 1.1.0,
reach only the middle blocks. Dropped conditions are swapped for learned null tokens, which is what
classifier-free guidance (Ho & Salimans 2022) contrasts against.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..helpers import default, exists
from ..nn.embedding import SinusoidalPosEmb
from .unet_attention import LinearAttention, SpatialSelfAttention, WindowGridAttention
from .unet_blocks import (
    ConvNextBlock,
    CrossEmbedLayer,
    Downsample,
    NearestUpsample,
    PixelShuffleUpsample,
    ResnetBlock,
    rearrange_tokens,
)
from .unet_config import AUTO_CHECKPOINT_PIXELS, AUTO_RECOMPUTE_BYTES, UnetConfig


def _drop_mask(drop: torch.Tensor | None, batch: int, name: str, device: torch.device) -> torch.Tensor:
    """(b,) bool, True where the condition is replaced by its learned null."""
    if not exists(drop):
        return torch.zeros(batch, dtype=torch.bool, device=device)
    if drop.dtype != torch.bool or drop.shape != (batch,):
        raise ValueError(f"{name} must be a bool tensor of shape ({batch},), got {drop.dtype} {tuple(drop.shape)}")
    return drop


# float32 bytes a training forward keeps per pixel and channel of a block's map, and per pixel and
# cross-attention feature, without selective recomputation (fitted to the saved tensors of the DALLE2-pytorch README's
# dim 32 and dim 128 unets, dim_mults 1-2-4-8; within 15% on both)
SAVED_BYTES_PER_MAP_ELEMENT, SAVED_BYTES_PER_ATTENTION_ELEMENT = 36.0, 8.5


def _call(checkpointed: bool, module: nn.Module, *args: torch.Tensor, **kwargs) -> torch.Tensor:
    """module(*args), recomputed in the backward pass when `checkpointed` (Chen et al. 2016)."""
    return checkpoint(module, *args, use_reentrant=False, **kwargs) if checkpointed else module(*args, **kwargs)


class Unet(nn.Module):
    """Denoising U-Net over (b, channels, h, w) conditioned on t, a CLIP image embedding and text encodings."""

    def __init__(self, config: UnetConfig | dict | None = None, **kwargs):
        super().__init__()
        self.config = cfg = UnetConfig.build(config, owner="Unet", **kwargs)
        # the most rows one sampling forward takes (None: all): past it classifier-free guidance runs its
        # batched branches in chunks, one chunk's activations alive at a time. A property of the run and
        # the machine, not of the model, so it is not in the config; off by default because a smaller
        # batch may round differently in oneDNN's convolutions
        self.sampling_max_batch: int | None = None
        blocks = cfg.blocks
        init_dim = default(blocks.init_dim, cfg.dim)
        dims = [init_dim, *(cfg.dim * m for m in cfg.dim_mults)]  # stage widths, stem first
        cond_dim = default(cfg.conditioning.cond_dim, cfg.dim)

        # stem: the low-res image (cascaded diffusion, Ho et al. 2021) is stacked on the channels
        in_channels = cfg.channels * (2 if cfg.conditioning.lowres_cond else 1)
        if blocks.init_cross_embed:
            self.init_conv = CrossEmbedLayer(in_channels, blocks.init_cross_embed_kernel_sizes, init_dim, stride=1)
        else:
            k = blocks.init_conv_kernel_size
            self.init_conv = nn.Conv2d(in_channels, init_dim, k, padding=k // 2)

        self._build_conditioning(cond_dim, time_cond_dim=cfg.dim * 4)

        # Imagen's skip scaling keeps the variance of concatenated skips in check
        self.skip_connect_scale = 2**-0.5 if blocks.scale_skip_connection else 1.0
        first_groups = cfg.per_stage("resnet_groups")[0]
        self.init_resnet_block = self._block(init_dim, init_dim, groups=first_groups) if blocks.memory_efficient else None
        skip_dims = self._build_downs(dims, cond_dim)
        self._build_middle(dims[-1], cond_dim)
        self._build_ups(dims, cond_dim, skip_dims)

        up_out = init_dim if blocks.memory_efficient else dims[1]
        self.final_resnet_block = self._block(up_out + init_dim, cfg.dim, groups=first_groups)
        k = blocks.final_conv_kernel_size
        # the low-res image is offered again at the output, as in 1.1.0
        out_in = cfg.dim + (cfg.channels if cfg.conditioning.lowres_cond else 0)
        self.to_out = nn.Conv2d(out_in, cfg.resolved_channels_out, k, padding=k // 2)
        # a zero head makes the untrained net predict 0 (OpenAI's ADM does the same)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def _build_downs(self, dims: list[int], cond_dim: int) -> list[int]:
        """The encoder stages; returns the width of each stage's skip connections."""
        cfg, efficient = self.config, self.config.blocks.memory_efficient
        groups, num_blocks = cfg.per_stage("resnet_groups"), cfg.per_stage("num_resnet_blocks")
        attends = list(zip(cfg.per_stage("self_attn"), cfg.per_stage("sparse_attn")))
        self.downs = nn.ModuleList()
        skip_dims = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            is_last = i == len(dims) - 2
            # the first stage skips cross-attention: at full resolution it costs the most
            stage_cond = None if i == 0 else cond_dim
            d_layer = d_out if efficient else d_in  # the efficient U-Net works after downsampling
            skip_dims.append(d_layer)
            self.downs.append(nn.ModuleDict(dict(
                pre_downsample=self._downsample(d_in, d_out) if efficient else nn.Identity(),
                init_block=self._block(d_layer, d_layer, groups=groups[i]),
                resnet_blocks=nn.ModuleList(
                    self._block(d_layer, d_layer, cond_dim=stage_cond, groups=groups[i]) for _ in range(num_blocks[i])
                ),
                attn=self._stage_attention(d_layer, *attends[i]),
                post_downsample=(
                    nn.Conv2d(d_layer, d_out, 1) if is_last or efficient else self._downsample(d_layer, d_out)
                ),
            )))
        return skip_dims

    def _build_middle(self, mid_dim: int, cond_dim: int):
        attn, groups = self.config.attention, self.config.per_stage("resnet_groups")[-1]
        self.mid_block1 = self._block(mid_dim, mid_dim, cond_dim=cond_dim, groups=groups)
        self.mid_attn = (
            SpatialSelfAttention(mid_dim, heads=attn.attn_heads, dim_head=attn.attn_dim_head)
            if attn.attend_at_middle
            else nn.Identity()
        )
        self.mid_block2 = self._block(mid_dim, mid_dim, cond_dim=cond_dim, groups=groups)

    def _build_ups(self, dims: list[int], cond_dim: int, skip_dims: list[int]):
        """The decoder stages, lowest resolution first; each concatenates the matching skips."""
        cfg, efficient = self.config, self.config.blocks.memory_efficient
        groups, num_blocks = cfg.per_stage("resnet_groups"), cfg.per_stage("num_resnet_blocks")
        attends = list(zip(cfg.per_stage("self_attn"), cfg.per_stage("sparse_attn")))
        upsample = PixelShuffleUpsample if cfg.blocks.pixel_shuffle_upsample else NearestUpsample
        skip_dims = list(skip_dims)
        self.ups = nn.ModuleList()
        for i in reversed(range(len(dims) - 1)):
            d_in, d_out = dims[i], dims[i + 1]
            stage_cond = None if i == 0 else cond_dim
            d_cat = d_out + skip_dims.pop()
            self.ups.append(nn.ModuleDict(dict(
                init_block=self._block(d_cat, d_out, cond_dim=stage_cond, groups=groups[i]),
                resnet_blocks=nn.ModuleList(
                    self._block(d_cat, d_out, cond_dim=stage_cond, groups=groups[i]) for _ in range(num_blocks[i])
                ),
                attn=self._stage_attention(d_out, *attends[i]),
                upsample=upsample(d_out, d_in) if efficient or i > 0 else nn.Identity(),
            )))

    def _build_conditioning(self, cond_dim: int, time_cond_dim: int):
        """Time FiLM vector and tokens, image tokens (+ FiLM), text projection, their learned nulls."""
        dim, cond = self.config.dim, self.config.conditioning
        self.to_time_hiddens = nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, time_cond_dim), nn.GELU())
        self.to_time_tokens = nn.Sequential(
            nn.Linear(time_cond_dim, cond_dim * cond.num_time_tokens), rearrange_tokens(cond.num_time_tokens)
        )
        self.to_time_cond = nn.Sequential(nn.Linear(time_cond_dim, time_cond_dim))
        if cond.cond_on_image_embeds:
            self.image_to_tokens = nn.Sequential(
                nn.Linear(cond.image_embed_dim, cond_dim * cond.num_image_tokens),
                rearrange_tokens(cond.num_image_tokens),
            )
            self.null_image_embed = nn.Parameter(torch.randn(1, cond.num_image_tokens, cond_dim))
            if cond.add_image_embeds_to_time:
                self.to_image_hiddens = nn.Sequential(nn.Linear(cond.image_embed_dim, time_cond_dim), nn.GELU())
                self.null_image_hiddens = nn.Parameter(torch.randn(1, time_cond_dim))
        if cond.cond_on_text_encodings:
            self.text_to_cond = nn.Linear(cond.text_embed_dim, cond_dim)
            # one null vector per text position: padding positions take it too (1.1.0 behaviour)
            self.null_text_embed = nn.Parameter(torch.randn(1, cond.max_text_len, cond_dim))
        if cond.lowres_noise_cond:
            self.to_lowres_noise_cond = nn.Sequential(
                SinusoidalPosEmb(dim),
                nn.Linear(dim, time_cond_dim),
                nn.GELU(),
                nn.Linear(time_cond_dim, time_cond_dim),
            )
        self.norm_cond = nn.LayerNorm(cond_dim)
        self.norm_mid_cond = nn.LayerNorm(cond_dim)

    def _block(self, dim: int, dim_out: int, *, groups: int, cond_dim: int | None = None) -> nn.Module:
        """A resnet or ConvNeXt block, FiLM-conditioned on time, cross-attending when `cond_dim` is set."""
        blocks, attn = self.config.blocks, self.config.attention
        kw = dict(
            time_cond_dim=self.config.dim * 4,
            cond_dim=cond_dim,
            groups=groups,
            cross_attn_heads=attn.cross_attn_heads,
            cross_attn_dim_head=attn.cross_attn_dim_head,
        )
        if blocks.block_type == "convnext":
            return ConvNextBlock(dim, dim_out, mult=blocks.convnext_mult, **kw)
        return ResnetBlock(dim, dim_out, **kw)

    def _downsample(self, dim: int, dim_out: int) -> nn.Module:
        blocks = self.config.blocks
        if blocks.cross_embed_downsample:
            return CrossEmbedLayer(dim, blocks.cross_embed_downsample_kernel_sizes, dim_out, stride=2)
        return Downsample(dim, dim_out, blocks.downsample_mode)

    def _stage_attention(self, dim: int, self_attn: bool, sparse_attn: bool) -> nn.Module:
        """Full attention where `self_attn`; else, where `sparse_attn`, window/grid or linear attention."""
        attn = self.config.attention
        heads = dict(heads=attn.attn_heads, dim_head=attn.attn_dim_head)
        if self_attn:
            return SpatialSelfAttention(dim, **heads)
        if sparse_attn and exists(attn.sparse_attn_window):
            return WindowGridAttention(dim, window=attn.sparse_attn_window, **heads)
        if sparse_attn:
            return LinearAttention(dim, normalize_v=attn.linear_attn_normalize_v, **heads)
        return nn.Identity()

    @classmethod
    def from_config(cls, config: UnetConfig | dict) -> Unet:
        return cls(config)

    def with_options(self, **overrides) -> Unet:
        """A freshly initialised Unet whose config is this one with `overrides` replaced.

        Returns `self` (weights kept) when the overrides change nothing, like DALLE2-pytorch's
        `cast_model_parameters`, so a Decoder does not re-initialise a correctly built unet.
        """
        config = UnetConfig.build(self.config, owner="Unet", **overrides)
        return self if config == self.config else type(self)(config)

    # the attributes the Decoder reads
    lowres_cond = property(lambda self: self.config.conditioning.lowres_cond)
    lowres_noise_cond = property(lambda self: self.config.conditioning.lowres_noise_cond)
    cond_on_text_encodings = property(lambda self: self.config.conditioning.cond_on_text_encodings)
    cond_on_image_embeds = property(lambda self: self.config.conditioning.cond_on_image_embeds)
    channels = property(lambda self: self.config.channels)
    channels_out = property(lambda self: self.config.resolved_channels_out)
    learned_variance = property(lambda self: self.config.learned_variance)

    @property
    def downsample_factor(self) -> int:
        """Height and width must be multiples of this."""
        return 2 ** (self.config.num_stages - (0 if self.config.blocks.memory_efficient else 1))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        image_embed: torch.Tensor | None = None,
        text_encodings: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        lowres_cond_img: torch.Tensor | None = None,
        lowres_noise_level: torch.Tensor | None = None,
        image_cond_drop_mask: torch.Tensor | None = None,
        text_cond_drop_mask: torch.Tensor | None = None,
        cond_drop_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The objective's prediction (b, channels_out, h, w) for x_t at timesteps t (b,)."""
        t = self._check_inputs(x, t, lowres_cond_img)
        lowres_cond = self.config.conditioning.lowres_cond
        if lowres_cond:
            x = torch.cat((x, lowres_cond_img), dim=1)

        run = partial(_call, self._checkpointing(x))
        rc = self._recomputing(x)  # selective recomputation inside the blocks
        x = self.init_conv(x)
        r = x  # the stem output is concatenated again before the head

        film, c_tokens, mid_tokens = self._conditioning(
            t, image_embed, text_encodings, text_mask, lowres_noise_level,
            image_cond_drop_mask, text_cond_drop_mask, cond_drop_mask, dtype=x.dtype,
        )

        if exists(self.init_resnet_block):
            x = run(self.init_resnet_block, x, film, recompute=rc)

        x, hiddens = self._down(x, run, film, c_tokens, rc)
        x = run(self.mid_block1, x, film, mid_tokens, recompute=rc)
        x = run(self.mid_attn, x)
        x = run(self.mid_block2, x, film, mid_tokens, recompute=rc)
        x = self._up(x, hiddens, run, film, c_tokens, rc)

        x = run(self.final_resnet_block, torch.cat((x, r), dim=1), film, recompute=rc)
        if lowres_cond:
            x = torch.cat((x, lowres_cond_img), dim=1)
        return self.to_out(x)

    def _down(self, x, run, film, c_tokens, rc) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoder half: x at the bottom and the skip activations, in the order the decoder half pops them."""
        hiddens = []
        for stage in self.downs:
            x = stage["pre_downsample"](x)
            x = run(stage["init_block"], x, film, recompute=rc)
            for block in stage["resnet_blocks"]:
                x = run(block, x, film, c_tokens, recompute=rc)
                hiddens.append(x)
            x = run(stage["attn"], x)
            hiddens.append(x)
            x = stage["post_downsample"](x)
        return x, hiddens

    def _up(self, x, hiddens, run, film, c_tokens, rc) -> torch.Tensor:
        """The decoder half: each block reads the matching skip activation (scaled by `skip_connect_scale`)."""
        for stage in self.ups:
            x = torch.cat((x, self._skip(hiddens.pop())), dim=1)
            x = run(stage["init_block"], x, film, c_tokens, recompute=rc)
            for block in stage["resnet_blocks"]:
                x = torch.cat((x, self._skip(hiddens.pop())), dim=1)
                x = run(block, x, film, c_tokens, recompute=rc)
            x = run(stage["attn"], x)
            x = stage["upsample"](x)
        return x

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, lowres_cond_img: torch.Tensor | None) -> torch.Tensor:
        """Checks x, t and the low-res image against the config; returns t as (b,) (a 0-dim t is broadcast)."""
        cfg = self.config
        b, c, h, w = x.shape
        if c != cfg.channels:
            raise ValueError(f"x has {c} channels, this Unet takes channels={cfg.channels}")
        f = self.downsample_factor
        if h % f or w % f:
            raise ValueError(f"image size {h}x{w} must be a multiple of {f} for dim_mults={cfg.dim_mults}")
        t = t.expand(b) if t.ndim == 0 else t
        if t.shape != (b,):
            raise ValueError(f"t must have shape ({b},), got {tuple(t.shape)}")
        if cfg.conditioning.lowres_cond:
            if not exists(lowres_cond_img):
                raise ValueError("this Unet has lowres_cond=True: pass lowres_cond_img (the upsampled low-res image)")
            if lowres_cond_img.shape != x.shape:
                raise ValueError(f"lowres_cond_img has shape {tuple(lowres_cond_img.shape)}, expected {tuple(x.shape)}")
        elif exists(lowres_cond_img):
            raise ValueError("lowres_cond_img given but this Unet has lowres_cond=False")
        return t

    def _conditioning(
        self, t, image_embed, text_encodings, text_mask, lowres_noise_level,
        image_cond_drop_mask, text_cond_drop_mask, cond_drop_mask, *, dtype,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """FiLM vector (b, time_cond_dim), tokens for every stage and for the middle (b, n, cond_dim)."""
        cond, (b,), device = self.config.conditioning, t.shape, t.device
        time_hiddens = self.to_time_hiddens(t.to(dtype))
        time_tokens = self.to_time_tokens(time_hiddens)  # (b, num_time_tokens, cond_dim)
        film = self.to_time_cond(time_hiddens)  # (b, time_cond_dim)

        if cond.lowres_noise_cond:
            if not exists(lowres_noise_level) or lowres_noise_level.shape not in ((), (b,)):
                got = tuple(lowres_noise_level.shape) if exists(lowres_noise_level) else None
                raise ValueError(f"this Unet has lowres_noise_cond=True: pass lowres_noise_level ({b},), got {got}")
            film = film + self.to_lowres_noise_cond(lowres_noise_level.to(dtype).expand(b))
        elif exists(lowres_noise_level):
            raise ValueError("lowres_noise_level given but this Unet was built with lowres_noise_cond=False")

        drop_both = _drop_mask(cond_drop_mask, b, "cond_drop_mask", device)
        image_keep = ~(_drop_mask(image_cond_drop_mask, b, "image_cond_drop_mask", device) | drop_both)
        text_keep = ~(_drop_mask(text_cond_drop_mask, b, "text_cond_drop_mask", device) | drop_both)

        tokens = [time_tokens]
        if cond.cond_on_image_embeds:
            if not exists(image_embed) or image_embed.shape != (b, cond.image_embed_dim):
                got = tuple(image_embed.shape) if exists(image_embed) else None
                raise ValueError(f"image_embed must have shape ({b}, {cond.image_embed_dim}), got {got}")
            image_embed = image_embed.to(dtype)
            image_tokens = self.image_to_tokens(image_embed)  # (b, num_image_tokens, cond_dim)
            tokens.append(torch.where(image_keep[:, None, None], image_tokens, self.null_image_embed.to(dtype)))
            if cond.add_image_embeds_to_time:
                image_hiddens = self.to_image_hiddens(image_embed)
                film = film + torch.where(image_keep[:, None], image_hiddens, self.null_image_hiddens.to(dtype))
        c_tokens = torch.cat(tokens, dim=1)

        mid_tokens = c_tokens
        if cond.cond_on_text_encodings:
            text_tokens = self._text_tokens(text_encodings, text_mask, text_keep, dtype)
            mid_tokens = torch.cat((c_tokens, text_tokens), dim=1)
        return film, self.norm_cond(c_tokens), self.norm_mid_cond(mid_tokens)

    def _skip(self, hidden: torch.Tensor) -> torch.Tensor:
        # x * 1.0 is x bit for bit, but as a new tensor: one skip-sized copy less when not scaling
        return hidden if self.skip_connect_scale == 1.0 else hidden * self.skip_connect_scale

    def saved_activation_bytes(self, batch: int, height: int, width: int, element_size: int = 4) -> int:
        """Estimated bytes a training forward keeps for backward without selective recomputation: per stage,
        its pixels x (block maps + cross-attention features), at the stage's width and block count."""
        cfg, attn, efficient = self.config, self.config.attention, self.config.blocks.memory_efficient
        inner = attn.cross_attn_heads * attn.cross_attn_dim_head
        attends = [a or s for a, s in zip(cfg.per_stage("self_attn"), cfg.per_stage("sparse_attn"))]
        # the full-resolution blocks outside the stages: the final block (and the efficient U-Net's first)
        total = batch * height * width * cfg.dim * SAVED_BYTES_PER_MAP_ELEMENT * (2 if efficient else 1)
        for i, (mult, n) in enumerate(zip(cfg.dim_mults, cfg.per_stage("num_resnet_blocks"))):
            pixels = batch * height * width / 4 ** (i + (1 if efficient else 0))
            maps = 2 * (1 + n) * cfg.dim * mult  # the down and the up blocks of the stage
            features = (2 * n + 1) * inner if i > 0 else 0  # the first stage does not cross-attend
            features += 2 * 3 * attn.attn_heads * attn.attn_dim_head if attends[i] else 0  # q, k, v down and up
            total += pixels * (SAVED_BYTES_PER_MAP_ELEMENT * maps + SAVED_BYTES_PER_ATTENTION_ELEMENT * features)
        return int(total * element_size / 4)

    def _recomputing(self, x: torch.Tensor) -> bool:
        if not (self.training and torch.is_grad_enabled()):
            return False
        setting = self.config.blocks.selective_recompute
        if exists(setting):
            return setting
        b, _, h, w = x.shape
        return self.saved_activation_bytes(b, h, w, x.element_size()) > AUTO_RECOMPUTE_BYTES

    def _checkpointing(self, x: torch.Tensor) -> bool:
        if not (self.training and torch.is_grad_enabled()):
            return False
        setting = self.config.blocks.gradient_checkpointing
        return setting if exists(setting) else x.shape[0] * x.shape[-2] * x.shape[-1] >= AUTO_CHECKPOINT_PIXELS

    def _text_tokens(self, text_encodings, text_mask, text_keep, dtype) -> torch.Tensor:
        """Text encodings projected to (b, max_text_len, cond_dim); padding and dropped rows take null tokens."""
        cond, b = self.config.conditioning, text_keep.shape[0]
        if not exists(text_encodings):
            raise ValueError("this Unet has cond_on_text_encodings=True: pass text_encodings (b, n, text_embed_dim)")
        if text_encodings.ndim != 3 or text_encodings.shape[0] != b or text_encodings.shape[-1] != cond.text_embed_dim:
            raise ValueError(
                f"text_encodings must have shape ({b}, n, {cond.text_embed_dim}), got {tuple(text_encodings.shape)}"
            )
        if not exists(text_mask):
            # 1.1.0 convention: an all-zero encoding is padding
            text_mask = (text_encodings != 0).any(dim=-1)
        if text_mask.dtype != torch.bool or text_mask.shape != text_encodings.shape[:2]:
            raise ValueError(
                f"text_mask must be a bool tensor of shape {tuple(text_encodings.shape[:2])}, "
                f"got {text_mask.dtype} {tuple(text_mask.shape)}"
            )
        n = cond.max_text_len
        text_tokens = self.text_to_cond(text_encodings.to(dtype)[:, :n])  # (b, <=n, cond_dim)
        text_mask = text_mask[:, :n]
        pad = n - text_tokens.shape[1]
        text_tokens = F.pad(text_tokens, (0, 0, 0, pad))  # (b, n, cond_dim)
        text_mask = F.pad(text_mask, (0, pad), value=False)
        keep = (text_mask & text_keep[:, None])[..., None]  # (b, n, 1)
        return torch.where(keep, text_tokens, self.null_text_embed.to(dtype))


__all__ = ["Unet", "UnetConfig"]
