"""VQGanVAE: the vector-quantised autoencoder whose latent space the decoder's latent-diffusion stages use.

VQGAN (Esser et al. 2021) with ResNet, ViT (Yu et al. 2021) or ConvNeXt (Liu et al. 2022) backbones,
used as the "vq-reg" autoencoder of latent diffusion (Rombach et al. 2021): diffusion runs on the
pre-quantisation latent from `encode`, and `decode` quantises before decoding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from dalle2_core.config import Config, config_dataclass
from dalle2_core.helpers import exists
from dalle2_core.vqgan.encoders import ConvNextEncDec, ResnetEncDec, ViTEncDec
from dalle2_core.vqgan.losses import (
    Discriminator,
    PerceptualLoss,
    adaptive_gan_weight,
    bce_discr_loss,
    bce_gen_loss,
    hinge_discr_loss,
    hinge_gen_loss,
    r1_penalty,
)
from dalle2_core.vqgan.quantize import ResidualVQ, VectorQuantizer

ENCDEC_TYPES = ("resnet", "vit", "convnext")


@config_dataclass
class VQGanBackboneConfig(Config):
    """Encoder/decoder backbone. `resnet_*`/`use_attn` apply to resnet, `vit_depth` to vit, `convnext_depth` to convnext."""

    encdec_type: str = "resnet"
    num_resnet_blocks: int | tuple[int, ...] = 1  # an int: blocks at the lowest resolution only
    resnet_groups: int = 16
    first_conv_kernel_size: int = 5
    use_attn: bool | tuple[bool, ...] = True  # a bool: attention at the lowest resolution only
    attn_heads: int = 8
    attn_dim_head: int = 64
    ff_mult: int = 4
    vit_depth: int = 4
    convnext_depth: int | tuple[int, ...] = 2

    def __post_init__(self):
        if self.encdec_type not in ENCDEC_TYPES:
            raise ValueError(f"encdec_type {self.encdec_type!r} is not one of {ENCDEC_TYPES}")


@config_dataclass
class VQGanQuantizerConfig(Config):
    """EMA codebook(s); `vq_heads > 1` is multi-head VQ, `use_residual_quantize` stacks `num_quantizers`."""

    vq_codebook_dim: int = 256
    vq_codebook_size: int = 512
    vq_decay: float = 0.8
    vq_commitment_weight: float = 1.0
    vq_use_cosine_sim: bool = True
    vq_kmeans_init: bool = True
    vq_kmeans_iters: int = 10
    vq_threshold_ema_dead_code: float = 0.0
    vq_heads: int = 1
    use_residual_quantize: bool = False
    num_quantizers: int = 1

    def __post_init__(self):
        if self.num_quantizers != 1 and not self.use_residual_quantize:
            raise ValueError(f"num_quantizers={self.num_quantizers} needs use_residual_quantize=True")
        if self.num_quantizers < 1 or self.vq_heads < 1 or self.vq_codebook_size < 1:
            raise ValueError(
                f"num_quantizers ({self.num_quantizers}), vq_heads ({self.vq_heads}) and "
                f"vq_codebook_size ({self.vq_codebook_size}) must be >= 1"
            )


@config_dataclass
class VQGanLossConfig(Config):
    """Autoencoder loss: recon + perceptual + adaptive-weighted GAN + commitment (Esser et al. 2021, eq. 5-7)."""

    use_vgg_and_gan: bool = True
    l2_recon_loss: bool = False
    use_hinge_loss: bool = True
    perceptual_weight: float = 1.0
    gan_weight: float = 1.0
    gradient_penalty_weight: float = 10.0  # R1 gamma
    discr_layers: int = 4
    discr_groups: int = 16


@config_dataclass
class VQGanVAEConfig(Config):
    dim: int
    image_size: int
    channels: int = 3
    layers: int = 4  # the latent is 2 ** layers times smaller than the image
    layer_mults: tuple[int, ...] | None = None  # resnet / convnext widths per layer, default 1, 2, 4, ...
    backbone: VQGanBackboneConfig = field(default_factory=VQGanBackboneConfig)
    quantizer: VQGanQuantizerConfig = field(default_factory=VQGanQuantizerConfig)
    loss: VQGanLossConfig = field(default_factory=VQGanLossConfig)

    def __post_init__(self):
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        if self.image_size % 2**self.layers != 0:
            raise ValueError(f"image_size {self.image_size} must be divisible by 2 ** layers = {2 ** self.layers}")


@config_dataclass
class NullVQGanVAEConfig(Config):
    channels: int = 3


def _build_backbone(cfg: VQGanVAEConfig) -> nn.Module:
    b = cfg.backbone
    if b.encdec_type == "resnet":
        return ResnetEncDec(
            cfg.dim, cfg.channels, cfg.layers, cfg.layer_mults, num_resnet_blocks=b.num_resnet_blocks,
            resnet_groups=b.resnet_groups, first_conv_kernel_size=b.first_conv_kernel_size, use_attn=b.use_attn,
            attn_heads=b.attn_heads, attn_dim_head=b.attn_dim_head,
        )
    if b.encdec_type == "vit":
        if cfg.layer_mults is not None:
            raise ValueError(f"layer_mults {cfg.layer_mults} has no meaning for the vit backbone (one width, dim)")
        return ViTEncDec(
            cfg.dim, cfg.channels, cfg.layers, depth=b.vit_depth, heads=b.attn_heads, dim_head=b.attn_dim_head,
            ff_mult=b.ff_mult,
        )
    return ConvNextEncDec(cfg.dim, cfg.channels, cfg.layers, cfg.layer_mults, depth=b.convnext_depth, ff_mult=b.ff_mult)


def _build_quantizer(q: VQGanQuantizerConfig, dim: int) -> nn.Module:
    kwargs = dict(
        codebook_size=q.vq_codebook_size, codebook_dim=q.vq_codebook_dim, heads=q.vq_heads, decay=q.vq_decay,
        commitment_weight=q.vq_commitment_weight, use_cosine_sim=q.vq_use_cosine_sim, kmeans_init=q.vq_kmeans_init,
        kmeans_iters=q.vq_kmeans_iters, threshold_ema_dead_code=q.vq_threshold_ema_dead_code,
    )
    if q.use_residual_quantize:
        return ResidualVQ(dim, num_quantizers=q.num_quantizers, **kwargs)
    return VectorQuantizer(dim, **kwargs)


class VQGanVAE(nn.Module):
    """VQGAN autoencoder (Esser et al. 2021) for latent diffusion; images in [-1, 1].

    `vgg`: optional module for the perceptual loss (see `PerceptualLoss`); without it torchvision's
    VGG16 is loaded on the first perceptual-loss call, never at construction.
    """

    def __init__(self, config: VQGanVAEConfig | dict | None = None, *, vgg: nn.Module | None = None, **kwargs):
        super().__init__()
        self.config = cfg = VQGanVAEConfig.build(config, owner="VQGanVAE", **kwargs)
        self.enc_dec = _build_backbone(cfg)
        self.vq = _build_quantizer(cfg.quantizer, self.enc_dec.encoded_dim)

        loss = cfg.loss
        use_perceptual = loss.use_vgg_and_gan and loss.perceptual_weight > 0
        if exists(vgg) and not use_perceptual:
            raise ValueError("vgg was given but the perceptual loss is off (use_vgg_and_gan=False or perceptual_weight=0)")
        if use_perceptual and cfg.channels not in (1, 3):
            raise ValueError(
                f"the VGG perceptual loss needs 1 or 3 channels, got channels={cfg.channels}; "
                "set perceptual_weight=0 or use_vgg_and_gan=False"
            )
        self.perceptual = PerceptualLoss(vgg) if use_perceptual else None
        self.discr = (
            Discriminator(cfg.dim, cfg.channels, loss.discr_layers, groups=loss.discr_groups)
            if loss.use_vgg_and_gan
            else None
        )
        self.discr_loss_fn = hinge_discr_loss if loss.use_hinge_loss else bce_discr_loss
        self.gen_loss_fn = hinge_gen_loss if loss.use_hinge_loss else bce_gen_loss
        self.recon_loss_fn = F.mse_loss if loss.l2_recon_loss else F.l1_loss

    @classmethod
    def from_config(cls, config: VQGanVAEConfig | dict, vgg: nn.Module | None = None) -> VQGanVAE:
        return cls(config, vgg=vgg)

    # the attributes the Decoder codes against

    @property
    def encoded_dim(self) -> int:
        return self.enc_dec.encoded_dim

    @property
    def layers(self) -> int:
        return self.config.layers

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def codebook_size(self) -> int:
        return self.config.quantizer.vq_codebook_size

    @property
    def codebook(self) -> torch.Tensor:
        return self.vq.codebook

    def get_encoded_fmap_size(self, image_size: int) -> int:
        return image_size // 2**self.layers

    def autoencoder_parameters(self) -> list[nn.Parameter]:
        """Parameters the autoencoder optimiser steps (everything but the discriminator)."""
        discr = {id(p) for p in self.discr.parameters()} if exists(self.discr) else set()
        return [p for p in self.parameters() if id(p) not in discr]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        if not exists(self.discr):
            raise ValueError("this VQGanVAE has no discriminator (use_vgg_and_gan=False)")
        return list(self.discr.parameters())

    def copy_for_eval(self) -> VQGanVAE:
        """A frozen eval-mode copy without discriminator or VGG, on this model's device and dtype."""
        loss = dataclasses.replace(self.config.loss, use_vgg_and_gan=False)
        vae = VQGanVAE(dataclasses.replace(self.config, loss=loss))
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("discr.")}
        vae.load_state_dict(state)
        param = next(self.parameters())
        return vae.to(device=param.device, dtype=param.dtype).eval().requires_grad_(False)

    # encode / quantise / decode

    def _check_image(self, img: torch.Tensor) -> None:
        factor = 2**self.layers
        if img.ndim != 4 or img.shape[1] != self.channels:
            raise ValueError(f"expected images (b, {self.channels}, h, w), got shape {tuple(img.shape)}")
        if img.shape[-2] % factor or img.shape[-1] % factor:
            raise ValueError(f"image height and width must be divisible by 2 ** layers = {factor}, got {tuple(img.shape[-2:])}")

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """Images (b, c, h, w) in [-1, 1] -> pre-quantisation latent (b, encoded_dim, h / 2**layers, w / 2**layers)."""
        self._check_image(img)
        return self.enc_dec.encode(img)

    def quantize(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latent (b, d, h, w) -> quantised latent, indices (b, h, w[, heads][, quantizers]), commitment loss."""
        if latent.ndim != 4 or latent.shape[1] != self.encoded_dim:
            raise ValueError(f"expected latents (b, {self.encoded_dim}, h, w), got shape {tuple(latent.shape)}")
        h, w = latent.shape[-2:]
        tokens = rearrange(latent, "b d h w -> b (h w) d")  # (b, h*w, d)
        quantized, indices, commit_loss = self.vq(tokens)
        quantized = rearrange(quantized, "b (h w) d -> b d h w", h=h, w=w)
        indices = indices.reshape(indices.shape[0], h, w, *indices.shape[2:])  # (b, h, w, ...)
        return quantized, indices, commit_loss

    def decode(self, latent: torch.Tensor, return_indices_and_loss: bool = False):
        """Latent (b, encoded_dim, h, w) -> quantise -> images (b, c, h * 2**layers, w * 2**layers), about [-1, 1]."""
        quantized, indices, commit_loss = self.quantize(latent)
        img = self.enc_dec.decode(quantized)
        return (img, indices, commit_loss) if return_indices_and_loss else img

    def decode_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (b, h, w[, heads][, quantizers]) as returned by `quantize` -> images."""
        b, h, w = indices.shape[:3]
        codes = self.vq.indices_to_codes(indices.reshape(b, h * w, *indices.shape[3:]))  # (b, h*w, d)
        return self.enc_dec.decode(rearrange(codes, "b (h w) d -> b d h w", h=h, w=w))

    # training

    def forward(
        self,
        img: torch.Tensor,
        return_loss: bool = False,
        return_discr_loss: bool = False,
        return_recons: bool = False,
        add_gradient_penalty: bool = True,
    ):
        """Reconstruction, or the autoencoder loss (`return_loss`) or discriminator loss (`return_discr_loss`)."""
        if return_loss and return_discr_loss:
            raise ValueError("pass return_loss or return_discr_loss, not both: they train different parameters")
        if return_discr_loss:
            return self._discr_loss(img, return_recons, add_gradient_penalty)

        recon, _, commit_loss = self.decode(self.encode(img), return_indices_and_loss=True)
        if not return_loss:
            return recon
        loss = self._autoencoder_loss(img, recon, commit_loss)
        return (loss, recon) if return_recons else loss

    def _autoencoder_loss(self, img: torch.Tensor, recon: torch.Tensor, commit_loss: torch.Tensor) -> torch.Tensor:
        cfg = self.config.loss
        nll = self.recon_loss_fn(recon, img)
        if exists(self.perceptual):
            nll = nll + cfg.perceptual_weight * self.perceptual(recon, img)
        if not exists(self.discr):
            return nll + commit_loss
        gen_loss = self.gen_loss_fn(self.discr(recon))
        weight = adaptive_gan_weight(nll, gen_loss, self.enc_dec.last_dec_layer) * cfg.gan_weight
        return nll + weight * gen_loss + commit_loss

    def _discr_loss(self, img: torch.Tensor, return_recons: bool, add_gradient_penalty: bool):
        if not exists(self.discr):
            raise ValueError("return_discr_loss needs the discriminator, but use_vgg_and_gan=False")
        with torch.no_grad():
            recon = self.decode(self.encode(img))
        real = img.detach().requires_grad_(add_gradient_penalty)
        fake_logits, real_logits = self.discr(recon), self.discr(real)
        loss = self.discr_loss_fn(fake_logits, real_logits)
        if add_gradient_penalty and self.config.loss.gradient_penalty_weight > 0:
            loss = loss + 0.5 * self.config.loss.gradient_penalty_weight * r1_penalty(real, real_logits)
        return (loss, recon) if return_recons else loss


class NullVQGanVAE(nn.Module):
    """Identity stand-in for pixel-space decoder stages: no latent, `layers = 0`, `encoded_dim = channels`."""

    def __init__(self, config: NullVQGanVAEConfig | dict | int | None = None, **kwargs):
        super().__init__()
        if isinstance(config, int):  # NullVQGanVAE(3) reads naturally; treat it as channels
            config, kwargs = None, {**kwargs, "channels": config}
        self.config = NullVQGanVAEConfig.build(config, owner="NullVQGanVAE", **kwargs)
        self.layers = 0

    @classmethod
    def from_config(cls, config: NullVQGanVAEConfig | dict) -> NullVQGanVAE:
        return cls(config)

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def encoded_dim(self) -> int:
        return self.config.channels

    def get_encoded_fmap_size(self, image_size: int) -> int:
        return image_size

    def copy_for_eval(self) -> NullVQGanVAE:
        return self

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        return img

    def decode(self, latent: torch.Tensor, return_indices_and_loss: bool = False):
        return (latent, None, latent.new_zeros(())) if return_indices_and_loss else latent


__all__ = [
    "NullVQGanVAE",
    "NullVQGanVAEConfig",
    "VQGanBackboneConfig",
    "VQGanLossConfig",
    "VQGanQuantizerConfig",
    "VQGanVAE",
    "VQGanVAEConfig",
]
