"""Classifier-free guidance wrapper, static clamp and dynamic thresholding."""

import math

import pytest
import torch

from dalle2_core.diffusion import classifier_free_guidance, dynamic_threshold, dynamic_thresholding, static_clamp


class FakeNet:
    """cond branch: 2x + embed (+ var channels 5), null branch: x (+ var channels -5); records calls."""

    def __init__(self, learned_variance=False):
        self.calls, self.learned_variance = [], learned_variance

    def __call__(self, x, t, cond_drop_mask, image_embed, scale=1.0):
        self.calls.append((x.shape[0], cond_drop_mask.tolist(), t.tolist(), image_embed.shape[0]))
        keep = (~cond_drop_mask).to(x.dtype).reshape(-1, 1)
        pred = x + keep * (x + image_embed * scale)
        if not self.learned_variance:
            return pred
        return torch.cat([pred, torch.where(cond_drop_mask.reshape(-1, 1), -5.0, 5.0).expand_as(x)], dim=1)


x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
embed = torch.tensor([[0.5, 0.5], [-1.0, 2.0]])
t = torch.tensor([7, 9])


def test_cond_scale_one_is_one_conditional_forward():
    net = FakeNet()
    out = classifier_free_guidance(net, 1.0, image_embed=embed)(x, t)
    assert torch.equal(out, 2 * x + embed)
    assert net.calls == [(2, [False, False], [7, 9], 2)]


def test_guidance_is_one_batched_forward_mixing_the_branches():
    net = FakeNet()
    out = classifier_free_guidance(net, 3.0, image_embed=embed, scale=2.0)(x, t)
    cond, uncond = 2 * x + 2 * embed, x
    assert torch.allclose(out, uncond + (cond - uncond) * 3.0)
    assert net.calls == [(4, [False, False, True, True], [7, 9, 7, 9], 4)]


def test_only_the_prediction_half_is_guided_with_learned_variance():
    out = classifier_free_guidance(FakeNet(learned_variance=True), 4.0, image_embed=embed)(x, t)
    assert torch.allclose(out[:, :2], x + (x + embed) * 4.0)
    assert torch.equal(out[:, 2:], torch.full((2, 2), 5.0))  # the conditional branch's variance
    every = classifier_free_guidance(FakeNet(learned_variance=True), 4.0, guide_variance=True, image_embed=embed)(x, t)
    assert torch.equal(every[:, 2:], torch.full((2, 2), -5.0 + 10.0 * 4.0))


@pytest.mark.parametrize("bad", [math.inf, math.nan, "strong"])
def test_cond_scale_must_be_finite(bad):
    with pytest.raises(ValueError, match="cond_scale must be a finite number"):
        classifier_free_guidance(FakeNet(), bad, image_embed=embed)


def test_static_clamp():
    assert static_clamp(torch.tensor([-3.0, 0.5, 2.0])).tolist() == [-1.0, 0.5, 1.0]


def test_dynamic_threshold_scales_each_sample_by_its_percentile():
    values = torch.arange(1, 101, dtype=torch.float64) / 50  # |x| from 0.02 to 2.0
    batch = torch.stack([values, values / 4]).reshape(2, 1, 10, 10)
    out = dynamic_threshold(batch, percentile=0.9)
    s = torch.quantile(values, 0.9).item()  # 1.802 > 1: clamp to ±s then divide by s
    assert s == pytest.approx(1.802)
    assert torch.allclose(out[0].flatten(), values.clamp(max=s) / s)
    # the second sample's percentile is below 1: s = 1 leaves it untouched
    assert torch.equal(out[1], batch[1])
    assert torch.equal(dynamic_thresholding(0.9)(batch), out)
    with pytest.raises(ValueError, match=r"percentile must be in \(0, 1\]"):
        dynamic_thresholding(95)
