"""VQGAN training losses: patch discriminator, hinge / BCE GAN losses, R1 penalty, adaptive GAN weight
(Esser et al. 2021) and an LPIPS-style VGG perceptual distance (Zhang et al. 2018).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# torchvision vgg16.features indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: the LPIPS taps
VGG16_LPIPS_TAPS = (3, 8, 15, 22, 29)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Discriminator(nn.Module):
    """Patch discriminator (Isola et al. 2017; VQGAN): one logit per receptive-field patch."""

    def __init__(self, dim: int, channels: int = 3, layers: int = 4, groups: int = 16, init_kernel_size: int = 5):
        super().__init__()
        dims = [dim * 2**i for i in range(layers)]
        if dim % groups != 0:
            raise ValueError(f"discriminator dim {dim} must be divisible by discr_groups {groups} (GroupNorm groups)")
        blocks: list[nn.Module] = [
            nn.Conv2d(channels, dims[0], init_kernel_size, padding=init_kernel_size // 2), nn.LeakyReLU(0.1)
        ]
        for dim_in, dim_out in zip(dims[:-1], dims[1:]):
            blocks += [nn.Conv2d(dim_in, dim_out, 4, stride=2, padding=1), nn.GroupNorm(groups, dim_out), nn.LeakyReLU(0.1)]
        blocks += [nn.Conv2d(dims[-1], dims[-1], 1), nn.LeakyReLU(0.1), nn.Conv2d(dims[-1], 1, 3, padding=1)]
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, c, h, w) -> patch logits (b, 1, h / 2**(layers-1), w / 2**(layers-1))."""
        return self.net(x)


def hinge_discr_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    return F.relu(1 + fake).mean() + F.relu(1 - real).mean()


def hinge_gen_loss(fake: torch.Tensor) -> torch.Tensor:
    return -fake.mean()


def bce_discr_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN (Goodfellow et al. 2014) on logits: -log(1 - D(fake)) - log D(real)."""
    return F.softplus(fake).mean() + F.softplus(-real).mean()


def bce_gen_loss(fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake).mean()


def r1_penalty(real: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """R1 regulariser (Mescheder et al. 2018, eq. 9 without gamma/2): E ||grad_x D(x)||^2 on real data."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(dim=1).mean()


def adaptive_gan_weight(
    nll_loss: torch.Tensor, gen_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """lambda = |grad_GL L_rec| / (|grad_GL L_GAN| + delta), Esser et al. 2021 eq. 7; detached."""
    (nll_grad,) = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)
    (gen_grad,) = torch.autograd.grad(gen_loss, last_layer, retain_graph=True)
    return (nll_grad.norm() / (gen_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


class VGGFeatures(nn.Module):
    """The conv trunk of a torchvision VGG16, returning the five LPIPS activations."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        bounds = (0, *(i + 1 for i in VGG16_LPIPS_TAPS))
        self.slices = nn.ModuleList(features[a:b] for a, b in zip(bounds[:-1], bounds[1:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for block in self.slices:
            x = block(x)
            feats.append(x)
        return feats


def load_vgg16() -> nn.Module:
    """torchvision's ImageNet VGG16 from the torch hub cache, downloading it if allowed."""
    from torchvision.models import VGG16_Weights, vgg16

    try:
        return vgg16(weights=VGG16_Weights.IMAGENET1K_V1, progress=False)
    except Exception as err:  # urllib / OSError / hash errors all mean "not available here"
        raise RuntimeError(
            "the VQGanVAE perceptual loss needs torchvision's ImageNet VGG16 weights, which are neither in "
            f"the torch hub cache ({torch.hub.get_dir()}) nor downloadable ({type(err).__name__}: {err}); "
            "pass vgg=<module> to VQGanVAE, or set perceptual_weight=0 or use_vgg_and_gan=False"
        ) from err


class PerceptualLoss:
    """LPIPS-style distance (Zhang et al. 2018, eq. 1 with unit channel weights) on VGG features.

    Not an `nn.Module` on purpose: the frozen VGG stays out of the VAE's state dict and checkpoints.
    It is built on the first call (never at construction), and follows the input's device and dtype.
    `vgg` may be a torchvision VGG (its conv trunk is tapped at the LPIPS layers) or any module
    mapping ImageNet-normalised (b, 3, h, w) images to a feature tensor or a list of them.
    """

    def __init__(self, vgg: nn.Module | None = None):
        self.vgg = vgg
        self._net: nn.Module | None = None

    def _network(self) -> nn.Module:
        if self._net is None:
            from torchvision.models import VGG

            vgg = self.vgg if self.vgg is not None else load_vgg16()
            net = VGGFeatures(vgg.features) if isinstance(vgg, VGG) else vgg
            self._net = net.eval().requires_grad_(False)
        return self._net

    def _features(self, img: torch.Tensor) -> list[torch.Tensor]:
        if img.shape[1] == 1:  # VGG wants RGB; grayscale is replicated
            img = img.expand(-1, 3, -1, -1)
        mean = torch.tensor(IMAGENET_MEAN, device=img.device, dtype=img.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=img.device, dtype=img.dtype).view(1, 3, 1, 1)
        img = ((img + 1) * 0.5 - mean) / std  # [-1, 1] -> ImageNet statistics
        feats = self._network().to(device=img.device, dtype=img.dtype)(img)
        return list(feats) if isinstance(feats, (list, tuple)) else [feats]

    def __call__(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sum over taps of the mean squared distance of channel-normalised features. Images in [-1, 1]."""
        if recon.shape[1] not in (1, 3):
            raise ValueError(f"perceptual loss needs 1 or 3 image channels, got {recon.shape[1]}")
        feats = self._features(torch.cat((recon, target)))
        total = recon.new_zeros(())
        for f in feats:
            f_recon, f_target = F.normalize(f, dim=1, eps=1e-10).chunk(2)
            total = total + (f_recon - f_target).pow(2).sum(dim=1).mean()
        return total


__all__ = [
    "Discriminator",
    "PerceptualLoss",
    "VGGFeatures",
    "adaptive_gan_weight",
    "bce_discr_loss",
    "bce_gen_loss",
    "hinge_discr_loss",
    "hinge_gen_loss",
    "load_vgg16",
    "r1_penalty",
]
