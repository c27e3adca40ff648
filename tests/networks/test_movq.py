"""MoVQ's config, shapes and codebook path (its numerics against diffusers are in test_kandinsky_parity.py)."""

import pytest
import torch

from dalle2_core.movq import MoVQ, MoVQConfig

TINY = dict(widths=(32, 32), layers_per_block=1, attention=(False, True), norm_groups=8, codebook_size=12)


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(TINY, widths=(32, 48)), r"widths \[48\] must be multiples of norm_groups=8 and of 32 \(SpatialNorm\)"),
        (dict(TINY, attention=(True,)), r"attention \(True,\) needs one value per width \(2\)"),
        (dict(TINY, latent_channels=0), "latent_channels must be a positive int, got 0"),
    ],
)
def test_bad_configs_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        MoVQConfig(**options)


def test_unknown_keywords_are_refused():
    with pytest.raises(TypeError, match="scaling_factor"):
        MoVQ(**TINY, scaling_factor=0.18)


def test_shapes_and_their_errors():
    torch.manual_seed(0)
    movq = MoVQ(**TINY).eval()
    assert movq.downsample_factor == 2
    latent = movq.encode(torch.rand(1, 3, 8, 12) * 2 - 1)
    assert latent.shape == (1, 4, 4, 6) and movq.decode(latent).shape == (1, 3, 8, 12)
    with pytest.raises(ValueError, match=r"images' height and width \(8, 9\) must be multiples of 2"):
        movq.encode(torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match=r"latent must have shape \(b, 4, h, w\), got \(1, 3, 4, 4\)"):
        movq.decode(torch.zeros(1, 3, 4, 4))


def test_quantize_picks_the_nearest_code_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    movq = MoVQ(**TINY)
    codes = movq.codebook.weight.detach()
    latent = (codes[torch.tensor([[3, 7], [11, 0]])].permute(2, 0, 1)[None] + 1e-3).requires_grad_()  # (1, 4, 2, 2) near codes
    quantized, indices = movq.quantize(latent)
    assert indices.tolist() == [[[3, 7], [11, 0]]]
    assert torch.allclose(quantized, codes[indices[0]].permute(2, 0, 1)[None], atol=1e-6)
    quantized.sum().backward()
    assert torch.equal(latent.grad, torch.ones_like(latent))
