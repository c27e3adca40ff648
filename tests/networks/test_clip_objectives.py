"""The CLIP objectives against hand-computed numbers: InfoNCE / DCL, FILIP, NT-Xent, SimSiam, MLM, augmentations."""

import math

import pytest
import torch

from dalle2_core.clip.losses import filip_image_to_text, filip_text_to_image, info_nce
from dalle2_core.clip.mlm import MaskedLanguageModel, choose_mlm_positions
from dalle2_core.clip.ssl import SimSiamHead, augment, nt_xent, random_resized_crop_and_flip

LOGITS = torch.tensor([[2.0, 0.0], [1.0, 3.0]])


def test_info_nce_matches_hand_computation():
    row0 = -2.0 + math.log(math.exp(2.0) + math.exp(0.0))
    row1 = -3.0 + math.log(math.exp(1.0) + math.exp(3.0))
    assert info_nce(LOGITS).item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_decoupled_info_nce_drops_the_positive_from_the_denominator():
    # DCL: log(sum of negatives) - positive; each row has one negative here
    expected = ((0.0 - 2.0) + (1.0 - 3.0)) / 2
    assert info_nce(LOGITS, decoupled=True).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="square"):
        info_nce(torch.zeros(2, 3))


def test_filip_token_wise_similarity_respects_the_text_mask():
    # one text (3 tokens, the last is padding), one image (2 patches)
    sim = torch.tensor([[[[0.1, 0.9], [0.5, 0.2], [5.0, 5.0]]]])  # (x=1, y=1, t=3, i=2)
    mask = torch.tensor([[True, True, False]])
    # text->image: best patch per real token (0.9, 0.5), averaged
    assert filip_text_to_image(sim, mask).item() == pytest.approx(0.7)
    # image->text: best real token per patch (0.5, 0.9); the padded 5.0 must not win
    assert filip_image_to_text(sim, mask).item() == pytest.approx(0.7)
    sim2 = torch.randn(2, 3, 4, 5)
    mask2 = torch.ones(2, 4, dtype=torch.bool)
    assert filip_text_to_image(sim2, mask2).shape == (2, 3)
    assert filip_image_to_text(sim2, mask2).shape == (3, 2)  # rows are images


def test_nt_xent_is_low_for_matching_views_and_high_for_swapped_ones():
    a = torch.eye(4)
    assert nt_xent(a, a.clone(), temperature=0.1).item() < 1e-3
    # positives orthogonal, a negative identical: the loss is large
    b = torch.roll(a, 1, dims=0)
    assert nt_xent(a, b, temperature=0.1).item() > 9.0


def test_simsiam_stops_the_gradient_through_its_targets():
    torch.manual_seed(0)
    head = SimSiamHead(dim=8, projection_dim=8)
    encoder = torch.nn.Linear(3 * 4 * 4, 8)
    images = torch.rand(4, 3, 4, 4)
    loss = head(images, lambda x: encoder(x.flatten(1)))
    assert -1.0 <= loss.item() <= 1.0  # a negative cosine
    loss.backward()
    assert encoder.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 2 images"):
        head(images[:1], lambda x: encoder(x.flatten(1)))


def test_mlm_positions_skip_padding_and_cover_every_row():
    torch.manual_seed(0)
    mask = torch.ones(64, 200, dtype=torch.bool)
    mask[:, 150:] = False
    mask[0, 1:] = False  # a one-token prompt still gets a target
    chosen = choose_mlm_positions(mask, 0.15)
    assert not (chosen & ~mask).any()
    assert chosen.any(dim=-1).all()
    rate = chosen[1:].sum().item() / mask[1:].sum().item()
    assert rate == pytest.approx(0.15, abs=0.01)


def test_mlm_loss_starts_near_uniform_cross_entropy():
    torch.manual_seed(0)
    vocab, dim = 50, 16
    mlm = MaskedLanguageModel(dim, vocab, mask_prob=0.15)
    torch.nn.init.zeros_(mlm.to_logits.weight)
    text = torch.randint(0, vocab, (8, 12))
    seen = []

    def encode(ids, mask):
        seen.append(ids)
        return torch.randn(ids.shape[0], ids.shape[1] + 1, dim)

    loss = mlm(text, torch.ones_like(text, dtype=torch.bool), encode)
    assert loss.item() == pytest.approx(math.log(vocab), abs=0.3)
    # most chosen tokens were replaced by [MASK] = the id past the vocabulary
    assert (seen[0] == vocab).sum() > 0 and (seen[0] == vocab).sum() <= 0.3 * text.numel()


def test_augmentations_are_per_image_and_stay_in_range():
    torch.manual_seed(0)
    images = torch.rand(1, 3, 16, 16).expand(6, -1, -1, -1).contiguous()
    views = augment(images)
    assert views.shape == images.shape
    assert views.min() >= 0 and views.max() <= 1
    # identical inputs, different random crops / colours per image
    assert (views[0] - views[1:]).abs().flatten(1).amax(dim=1).min() > 1e-3
    torch.manual_seed(3)
    again = augment(images)
    torch.manual_seed(3)
    torch.testing.assert_close(again, augment(images))
    # a full-size crop is the image itself, or its mirror when flipped
    full = random_resized_crop_and_flip(images[:1], scale=(1.0, 1.0), ratio=(1.0, 1.0))
    error = min((full - images[:1]).abs().max(), (full - images[:1].flip(-1)).abs().max())
    assert error < 1e-5
