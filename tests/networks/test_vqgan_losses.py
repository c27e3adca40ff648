"""VQGanVAE training losses: perceptual (with a user VGG), adaptive GAN weight, discriminator step, offline VGG."""

import urllib.error

import pytest
import torch
import torchvision.models
from torch import nn

from dalle2_core import VQGanVAE
from dalle2_core.vqgan.losses import (
    PerceptualLoss,
    adaptive_gan_weight,
    bce_discr_loss,
    bce_gen_loss,
    hinge_discr_loss,
    hinge_gen_loss,
)

TINY_GAN = dict(
    dim=8, image_size=16, layers=2, vq_codebook_size=8, vq_codebook_dim=4, resnet_groups=4, discr_groups=4,
    discr_layers=2, attn_heads=2, attn_dim_head=8,
)


class TwoTapVGG(nn.Module):
    """A tiny stand-in for VGG returning two feature maps, as the LPIPS taps do."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x):
        a = self.a(x)
        return [a, self.b(a)]


def images() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_gan_and_perceptual_loss_is_finite_and_reaches_the_encoder():
    torch.manual_seed(0)
    vgg = TwoTapVGG()
    vae = VQGanVAE(**TINY_GAN, vgg=vgg)
    loss, recon = vae(images(), return_loss=True, return_recons=True)
    loss.backward()
    assert torch.isfinite(loss) and recon.shape == (2, 3, 16, 16)
    # recon l1 (~1) + perceptual + commitment + weighted GAN term; measured 1.73
    assert 0.5 < loss.item() < 5.0
    assert vae.enc_dec.encoder[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in vgg.parameters())  # the VGG is frozen
    assert not any("vgg" in k or "perceptual" in k for k in vae.state_dict())  # and not checkpointed


def test_perceptual_distance_is_zero_for_equal_images_and_grows_with_difference():
    torch.manual_seed(0)
    perceptual = PerceptualLoss(TwoTapVGG())
    x = images()
    assert perceptual(x, x).item() == pytest.approx(0.0, abs=1e-6)
    near, far = perceptual(x + 0.05 * torch.randn_like(x), x), perceptual(-x, x)
    assert 0 < near.item() < far.item()
    assert perceptual(x[:, :1], x[:, :1]).item() == pytest.approx(0.0, abs=1e-6)  # grayscale is replicated


def test_a_torchvision_vgg_is_tapped_at_the_lpips_layers():
    with torch.device("meta"):  # skip allocating the 120M-parameter classifier, which is never used
        vgg = torchvision.models.vgg16(weights=None)
    # a real conv trunk with random weights: only the wiring is under test
    vgg.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    feats = PerceptualLoss(vgg)._features(torch.zeros(1, 3, 32, 32))
    assert [f.shape[1:] for f in feats] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]


def test_adaptive_weight_is_the_ratio_of_last_layer_gradient_norms():
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    nll, gen = (3 * w).sum(), (w**2).sum()  # grads (3, 3) and (2, 4)
    expected = torch.tensor(18.0).sqrt() / (torch.tensor(20.0).sqrt() + 1e-4)
    torch.testing.assert_close(adaptive_gan_weight(nll, gen, w), expected)
    assert adaptive_gan_weight(nll, 0 * gen + w.sum() * 1e-12, w).item() == 1e4  # clamped


def test_gan_loss_values():
    fake, real = torch.tensor([0.5, -2.0]), torch.tensor([2.0, 0.0])
    assert hinge_discr_loss(fake, real).item() == pytest.approx((1.5 + 0.0) / 2 + (0.0 + 1.0) / 2)
    assert hinge_gen_loss(fake).item() == pytest.approx(0.75)
    sig = torch.sigmoid
    expected = (-torch.log(1 - sig(fake))).mean() + (-torch.log(sig(real))).mean()
    assert bce_discr_loss(fake, real).item() == pytest.approx(expected.item(), rel=1e-5)
    assert bce_gen_loss(fake).item() == pytest.approx((-torch.log(sig(fake))).mean().item(), rel=1e-5)


@pytest.mark.parametrize("use_hinge_loss", [True, False])
def test_discriminator_step_trains_only_the_discriminator(use_hinge_loss):
    torch.manual_seed(0)
    vae = VQGanVAE(**TINY_GAN, perceptual_weight=0.0, use_hinge_loss=use_hinge_loss)
    x = images()
    opt = torch.optim.Adam(vae.discriminator_parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = vae(x, return_discr_loss=True, add_gradient_penalty=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is None for p in vae.autoencoder_parameters())
    assert losses[-1] < 0.8 * losses[0]  # real and reconstructed images become separable
    with_penalty = vae(x, return_discr_loss=True)
    without = vae(x, return_discr_loss=True, add_gradient_penalty=False)
    assert with_penalty.item() > without.item()  # the R1 term is positive
    assert len(vae.autoencoder_parameters()) + len(vae.discriminator_parameters()) == len(list(vae.parameters()))


def test_missing_vgg_weights_offline_raise_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torchvision.models, "vgg16", offline)
    vae = VQGanVAE(**TINY_GAN)
    with pytest.raises(RuntimeError, match="pass vgg=<module> to VQGanVAE, or set perceptual_weight=0"):
        vae(images(), return_loss=True)
    assert list(tmp_path.iterdir()) == []


def test_perceptual_off_skips_the_vgg_entirely():
    vae = VQGanVAE(**TINY_GAN, perceptual_weight=0.0)
    assert vae.perceptual is None and vae.discr is not None
    assert VQGanVAE(**TINY_GAN, use_vgg_and_gan=False).discr is None
    with pytest.raises(ValueError, match="vgg was given"):
        VQGanVAE(**TINY_GAN, use_vgg_and_gan=False, vgg=TwoTapVGG())
    with pytest.raises(ValueError, match="use_vgg_and_gan=False"):
        VQGanVAE(**TINY_GAN, use_vgg_and_gan=False)(images(), return_discr_loss=True)
