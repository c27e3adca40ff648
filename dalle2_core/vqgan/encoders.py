"""VQGAN encoder/decoder backbones: ResNet (Esser et al. 2021), ViT (Yu et al. 2021), ConvNeXt (Liu et al. 2022).

Every backbone downsamples by exactly `2 ** layers` and exposes `encode`, `decode`, `encoded_dim`
and `last_dec_layer` (the weight the adaptive GAN weight is measured on).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from dalle2_core.helpers import cast_tuple
from dalle2_core.nn.attention import Attention
from dalle2_core.nn.norm import ChanLayerNorm


def _leaky_relu() -> nn.Module:
    return nn.LeakyReLU(0.1)


def _attention(dim: int, heads: int, dim_head: int) -> Attention:
    """Pre-norm multi-head self-attention over tokens (b, n, d), ViT-parameterised (fused qkv, biased output)."""
    return Attention(dim, heads=heads, kv_heads=heads, dim_head=dim_head, norm=nn.LayerNorm, vit=True)


def _channel_norm(dim: int) -> ChanLayerNorm:
    return ChanLayerNorm(dim, bias=True)


class SpatialAttention(nn.Module):
    """Residual self-attention over the pixels of a feature map."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.attn = _attention(dim, heads, dim_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        tokens = rearrange(x, "b c h w -> b (h w) c")  # (b, h*w, c)
        return x + rearrange(self.attn(tokens), "b (h w) c -> b c h w", h=h, w=w)


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult), nn.GELU(), nn.Linear(dim * mult, dim))


def _layer_dims(dim: int, layers: int, layer_mults: tuple[int, ...] | None) -> tuple[int, ...]:
    mults = cast_tuple(layer_mults, layers) if layer_mults is not None else tuple(2**i for i in range(layers))
    if len(mults) != layers:
        raise ValueError(f"layer_mults {mults} must have one entry per layer (layers={layers})")
    return (dim, *(dim * m for m in mults))


# ResNet


class ResBlock(nn.Module):
    def __init__(self, dim: int, groups: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(groups, dim), _leaky_relu(),
            nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(groups, dim), _leaky_relu(),
            nn.Conv2d(dim, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class _ConvEncDec(nn.Module):
    """A convolutional encoder/decoder pair held as two `nn.Sequential`s (set by the subclass)."""

    encoder: nn.Sequential
    decoder: nn.Sequential

    @property
    def last_dec_layer(self) -> nn.Parameter:
        return self.decoder[-1].weight

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


class ResnetEncDec(_ConvEncDec):
    """Strided-conv encoder and transposed-conv decoder with residual blocks and attention (VQGAN)."""

    def __init__(
        self,
        dim: int,
        channels: int = 3,
        layers: int = 4,
        layer_mults: tuple[int, ...] | None = None,
        num_resnet_blocks: int | tuple[int, ...] = 1,
        resnet_groups: int = 16,
        first_conv_kernel_size: int = 5,
        use_attn: bool | tuple[bool, ...] = True,
        attn_heads: int = 8,
        attn_dim_head: int = 64,
    ):
        super().__init__()
        if dim % resnet_groups != 0:
            raise ValueError(f"dim {dim} must be divisible by resnet_groups {resnet_groups} (GroupNorm groups)")
        dims = _layer_dims(dim, layers, layer_mults)
        # a scalar means "only at the lowest resolution", where blocks and attention are cheapest
        if not isinstance(num_resnet_blocks, tuple):
            num_resnet_blocks = (0,) * (layers - 1) + (num_resnet_blocks,)
        if not isinstance(use_attn, tuple):
            use_attn = (False,) * (layers - 1) + (use_attn,)
        if len(num_resnet_blocks) != layers or len(use_attn) != layers:
            raise ValueError(
                f"num_resnet_blocks {num_resnet_blocks} and use_attn {use_attn} need one entry per layer ({layers})"
            )
        self.layers, self.encoded_dim = layers, dims[-1]

        encoders = [nn.Conv2d(channels, dim, first_conv_kernel_size, padding=first_conv_kernel_size // 2)]
        decoders: list[nn.Module] = [nn.Conv2d(dim, channels, 1)]
        for dim_in, dim_out, blocks, attn in zip(dims[:-1], dims[1:], num_resnet_blocks, use_attn):
            encoders += [nn.Conv2d(dim_in, dim_out, 4, stride=2, padding=1), _leaky_relu()]
            encoders += [ResBlock(dim_out, resnet_groups) for _ in range(blocks)]
            up = [nn.ConvTranspose2d(dim_out, dim_in, 4, stride=2, padding=1), _leaky_relu()]
            res = [ResBlock(dim_out, resnet_groups) for _ in range(blocks)]
            if attn:
                encoders.append(SpatialAttention(dim_out, attn_heads, attn_dim_head))
                res = [SpatialAttention(dim_out, attn_heads, attn_dim_head), *res]
            decoders = [*res, *up, *decoders]
        self.encoder = nn.Sequential(*encoders)
        self.decoder = nn.Sequential(*decoders)


# ViT


def sincos_pos_emb_2d(h: int, w: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding (MAE, He et al. 2021) -> (h*w, dim)."""
    if dim % 4 != 0:
        raise ValueError(f"ViT dim {dim} must be divisible by 4 for the 2D sine-cosine position embedding")
    y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, device=device) / (dim // 4))
    y = y.flatten()[:, None] * omega[None, :]  # (h*w, dim/4)
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1).to(dtype)


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, ff_mult: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleList([_attention(dim, heads, dim_head), _feed_forward(dim, ff_mult)]) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in self.blocks:
            x = x + attn(x)
            x = x + ff(x)
        return self.norm(x)


class ViTEncDec(nn.Module):
    """ViT-VQGAN (Yu et al. 2021, section 3.1): patches of side `2 ** layers` through transformers."""

    def __init__(
        self,
        dim: int,
        channels: int = 3,
        layers: int = 3,
        depth: int = 4,
        heads: int = 8,
        dim_head: int = 64,
        ff_mult: int = 4,
    ):
        super().__init__()
        self.layers, self.encoded_dim, self.patch_size = layers, dim, 2**layers
        patch_dim = channels * self.patch_size**2
        self.to_tokens = nn.Sequential(nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim), nn.LayerNorm(dim))
        self.enc_transformer = Transformer(dim, depth, heads, dim_head, ff_mult)
        self.dec_transformer = Transformer(dim, depth, heads, dim_head, ff_mult)
        # the tanh head follows the ViT-VQGAN decoder's output MLP
        self.to_pixels = nn.Sequential(nn.Linear(dim, dim * 4), nn.Tanh(), nn.Linear(dim * 4, patch_dim))

    @property
    def last_dec_layer(self) -> nn.Parameter:
        return self.to_pixels[-1].weight

    def _with_pos(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        pos = sincos_pos_emb_2d(h, w, tokens.shape[-1], device=tokens.device, dtype=tokens.dtype)
        return tokens + pos

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        h, w = x.shape[-2] // p, x.shape[-1] // p
        tokens = rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)  # (b, h*w, p*p*c)
        tokens = self.enc_transformer(self._with_pos(self.to_tokens(tokens), h, w))
        return rearrange(tokens, "b (h w) d -> b d h w", h=h, w=w)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h, w = z.shape[-2:]
        tokens = self._with_pos(rearrange(z, "b d h w -> b (h w) d"), h, w)  # (b, h*w, d)
        pixels = self.to_pixels(self.dec_transformer(tokens))
        p = self.patch_size
        return rearrange(pixels, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=h, w=w, p1=p, p2=p)


# ConvNeXt


class ConvNextBlock(nn.Module):
    """ConvNeXt block (Liu et al. 2022, fig. 4): 7x7 depthwise conv, LayerNorm, MLP, layer scale."""

    def __init__(self, dim: int, mult: int = 4, layer_scale_init: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.mlp = _feed_forward(dim, mult)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.dwconv(x).permute(0, 2, 3, 1))  # (b, h, w, c)
        return x + (y * self.gamma).permute(0, 3, 1, 2)


class ConvNextEncDec(_ConvEncDec):
    """ConvNeXt stages with LayerNorm + 2x2 strided conv between them (Liu et al. 2022), mirrored to decode."""

    def __init__(
        self,
        dim: int,
        channels: int = 3,
        layers: int = 4,
        layer_mults: tuple[int, ...] | None = None,
        depth: int | tuple[int, ...] = 2,
        ff_mult: int = 4,
    ):
        super().__init__()
        dims = _layer_dims(dim, layers, layer_mults)
        depth = cast_tuple(depth, layers)
        self.layers, self.encoded_dim = layers, dims[-1]

        encoders: list[nn.Module] = [nn.Conv2d(channels, dim, 3, padding=1)]
        decoders: list[nn.Module] = [_channel_norm(dim), nn.Conv2d(dim, channels, 1)]
        for dim_in, dim_out, n in zip(dims[:-1], dims[1:], depth):
            encoders += [_channel_norm(dim_in), nn.Conv2d(dim_in, dim_out, 2, stride=2)]
            encoders += [ConvNextBlock(dim_out, ff_mult) for _ in range(n)]
            up = [_channel_norm(dim_out), nn.ConvTranspose2d(dim_out, dim_in, 2, stride=2)]
            decoders = [*(ConvNextBlock(dim_out, ff_mult) for _ in range(n)), *up, *decoders]
        self.encoder = nn.Sequential(*encoders)
        self.decoder = nn.Sequential(*decoders)


__all__ = ["ConvNextEncDec", "ResnetEncDec", "ViTEncDec", "sincos_pos_emb_2d"]
