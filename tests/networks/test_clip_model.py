"""The trainable CLIP: every objective trains, embeddings and masks behave, configs are strict."""

import pytest
import torch

from dalle2_core import CLIP
from dalle2_core.clip import CLIPConfig

VOCAB, SEQ = 64, 8

OPTIONS = {
    "plain": {},
    "filip": dict(use_all_token_embeds=True),
    "dcl": dict(decoupled_contrastive_learning=True),
    "extra_latent_projection": dict(extra_latent_projection=True),
    "simclr": dict(use_visual_ssl=True, visual_ssl_type="simclr", image_ssl_loss_weight=0.5),
    "simsiam": dict(use_visual_ssl=True, visual_ssl_type="simsiam", image_ssl_loss_weight=0.5),
    "mlm": dict(use_mlm=True, text_ssl_loss_weight=0.5),
    "all": dict(
        use_all_token_embeds=True,
        decoupled_contrastive_learning=True,
        extra_latent_projection=True,
        use_visual_ssl=True,
        visual_ssl_type="simclr",
        use_mlm=True,
    ),
}


TINY = dict(
    dim_text=32,
    dim_image=32,
    dim_latent=16,
    num_text_tokens=VOCAB,
    text_enc_depth=1,
    text_seq_len=SEQ,
    text_heads=2,
    visual_enc_depth=1,
    visual_image_size=32,
    visual_patch_size=8,
    visual_heads=2,
    ssl_projection_dim=16,
)


def tiny_clip(**kwargs) -> CLIP:
    return CLIP(**{**TINY, **kwargs})


def toy_batch():
    g = torch.Generator().manual_seed(1)
    text = torch.randint(1, VOCAB, (4, SEQ), generator=g)
    text[0, 5:] = 0  # padded prompts
    text[2, 3:] = 0
    return text, torch.rand(4, 3, 32, 32, generator=g)


@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_objective_trains_on_a_fixed_batch(option):
    torch.manual_seed(0)
    clip = tiny_clip(**OPTIONS[option])
    text, images = toy_batch()
    opt = torch.optim.Adam(clip.parameters(), lr=3e-3)

    def seeded_loss() -> float:
        torch.manual_seed(123)  # same augmentations and MLM masks at start and end
        with torch.no_grad():
            return clip(text, images, return_loss=True).item()

    initial = seeded_loss()
    for _ in range(15):
        loss = clip(text, images, return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = seeded_loss()
    assert final < initial - 0.2, (option, initial, final)


def test_objectives_change_the_loss_and_add_their_parameters():
    text, images = toy_batch()
    losses, counts = {}, {}
    for option in ("plain", "dcl", "filip", "mlm", "simclr", "simsiam"):
        torch.manual_seed(0)
        clip = tiny_clip(**OPTIONS[option])
        torch.manual_seed(5)
        losses[option] = clip(text, images, return_loss=True).item()
        counts[option] = sum(p.numel() for p in clip.parameters())
    # same initial weights, different objective -> different number
    assert len({round(v, 5) for v in losses.values()}) == len(losses)
    # DCL drops the positive from the denominator, so it is below plain InfoNCE
    assert losses["dcl"] < losses["plain"]
    assert counts["filip"] == counts["plain"] == counts["dcl"]
    assert counts["mlm"] == counts["plain"] + 32 + (32 * VOCAB + VOCAB)  # [MASK] embedding + MLM head
    assert counts["simclr"] > counts["plain"] and counts["simsiam"] > counts["plain"]


def test_extra_latent_projection_gives_a_separate_image_to_text_direction():
    torch.manual_seed(0)
    clip = tiny_clip(extra_latent_projection=True)
    text, images = toy_batch()
    opt = torch.optim.Adam(clip.parameters(), lr=3e-3)
    for _ in range(3):
        loss = clip(text, images, return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.allclose(clip.to_text_latent.weight, clip.to_text_latent_extra.weight)
    text_states, mask = clip.encode_text(text)
    (t2i, i2t), = clip.similarity_logits(text_states, mask, clip.encode_image(images))
    assert t2i.shape == i2t.shape == (4, 4)
    assert (t2i.t() - i2t).abs().max() > 1e-3


def test_temperature_is_learned():
    torch.manual_seed(0)
    clip = tiny_clip()
    assert clip.temperature_scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    text, images = toy_batch()
    clip(text, images, return_loss=True).backward()
    assert clip.logit_scale.grad is not None and clip.logit_scale.grad.abs().item() > 0


def test_similarity_logits_without_loss():
    torch.manual_seed(0)
    text, images = toy_batch()
    clip = tiny_clip()
    logits = clip(text, images[:3])
    emb_t, emb_i = clip.embed_text(text).text_embed, clip.embed_image(images[:3]).image_embed
    assert logits.shape == (4, 3)
    torch.testing.assert_close(logits, clip.temperature_scale() * emb_t @ emb_i.t())
    filip = tiny_clip(use_all_token_embeds=True)
    assert filip(text, images).shape == (4, 4)


def test_embeddings_are_normalised_and_padding_is_masked():
    torch.manual_seed(0)
    clip = tiny_clip().eval()
    text, images = toy_batch()
    et = clip.embed_text(text)
    assert et.text_embed.shape == (4, 16) and et.text_encodings.shape == (4, SEQ, 32)
    torch.testing.assert_close(et.text_embed.norm(dim=-1), torch.ones(4))
    assert et.text_mask.sum(dim=-1).tolist() == [5, 8, 3, 8]
    assert et.text_encodings[0, 5:].abs().sum() == 0 and et.text_encodings[0, :5].abs().sum() > 0
    ei = clip.embed_image(images)
    assert ei.image_embed.shape == (4, 16) and ei.image_encodings.shape == (4, 16, 32)
    torch.testing.assert_close(ei.image_embed.norm(dim=-1), torch.ones(4))
    # padding changes nothing: a 3-token prompt embeds the same alone or padded to SEQ
    short = clip.embed_text(text[2:3, :3])
    torch.testing.assert_close(short.text_embed, et.text_embed[2:3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(short.text_encodings, et.text_encodings[2:3, :3], atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise_naming_the_value():
    clip = tiny_clip()
    text, images = toy_batch()
    with pytest.raises(ValueError, match=r"\[0, 64\).*num_text_tokens"):
        clip.embed_text(torch.full((1, 4), VOCAB))
    with pytest.raises(ValueError, match="text_seq_len is 8"):
        clip.embed_text(torch.ones(1, SEQ + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(batch, 3, 32, 32\).*XClipAdapter"):
        clip.embed_image(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="paired"):
        clip(text, images[:2], return_loss=True)
    with pytest.raises(ValueError, match="at least 2"):
        tiny_clip(decoupled_contrastive_learning=True)(text[:1], images[:1], return_loss=True)


def test_config_is_typed_strict_and_round_trips():
    with pytest.raises(TypeError, match="'visual_ssl_kind'.*accepted"):
        tiny_clip(visual_ssl_kind="simclr")
    with pytest.raises(ValueError, match="'byol' is not one of"):
        tiny_clip(visual_ssl_type="byol")
    with pytest.raises(ValueError, match="divisible by visual_patch_size"):
        tiny_clip(visual_patch_size=7)
    with pytest.raises(ValueError, match="multiple of heads"):
        CLIP(dim_text=30, text_heads=4)
    torch.manual_seed(0)
    clip = tiny_clip(**OPTIONS["all"]).eval()
    assert isinstance(clip.config, CLIPConfig) and clip.config.losses.use_mlm
    assert clip.config.text.num_text_tokens == VOCAB and clip.config.visual.dim_image == 32
    rebuilt = CLIP.from_config(clip.config.to_dict())
    assert rebuilt.config == clip.config
    rebuilt.load_state_dict(clip.state_dict())
    text, images = toy_batch()
    torch.testing.assert_close(rebuilt(text, images), clip(text, images))


def test_seed_readme_first_example():
    """The DALLE2-pytorch README's CLIP example, as written (4 images, 256 px, 512 dims), on CPU."""
    torch.manual_seed(0)
    clip = CLIP(
        dim_text=512,
        dim_image=512,
        dim_latent=512,
        num_text_tokens=49408,
        text_enc_depth=1,
        text_seq_len=256,
        text_heads=8,
        visual_enc_depth=1,
        visual_image_size=256,
        visual_patch_size=32,
        visual_heads=8,
        use_all_token_embeds=True,
        decoupled_contrastive_learning=True,
        extra_latent_projection=True,
        use_visual_ssl=True,
        visual_ssl_type="simclr",
        use_mlm=False,
        text_ssl_loss_weight=0.05,
        image_ssl_loss_weight=0.05,
    )
    text = torch.randint(0, 49408, (4, 256))
    images = torch.randn(4, 3, 256, 256)
    loss = clip(text, images, return_loss=True)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert clip.to_text_latent.weight.grad.abs().sum() > 0
    assert clip.visual_ssl.projector[0].weight.grad.abs().sum() > 0
