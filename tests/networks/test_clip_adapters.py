"""The ClipAdapter interface over the project CLIP and over (tiny, random, offline) open_clip models."""

import copy

import huggingface_hub
import open_clip
import pytest
import torch
import torch.nn.functional as F

from dalle2_core import CLIP, OpenAIClipAdapter, OpenClipAdapter, XClipAdapter
from dalle2_core.clip import ClipAdapter, ClipWeightsUnavailable, PromptTruncatedWarning, as_clip_adapter
from dalle2_core.clip.open_clip_adapter import openai_to_open_clip_name

SOT, EOT = 49406, 49407
TINY_OPEN_CLIP = dict(
    embed_dim=16,
    vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
    text_cfg=dict(context_length=20, vocab_size=49408, width=32, heads=2, layers=1),
)


@pytest.fixture(scope="module")
def xclip():
    torch.manual_seed(0)
    clip = CLIP(
        dim_text=32,
        dim_image=32,
        dim_latent=16,
        num_text_tokens=49408,
        text_enc_depth=1,
        text_seq_len=12,
        text_heads=2,
        visual_enc_depth=1,
        visual_image_size=32,
        visual_patch_size=8,
        visual_heads=2,
    )
    return XClipAdapter(clip).eval()


def tiny_open_clip(**extra) -> OpenClipAdapter:
    torch.manual_seed(0)
    return OpenClipAdapter("ViT-B-32", pretrained=None, **TINY_OPEN_CLIP, **extra)


@pytest.fixture(scope="module")
def oclip():
    return tiny_open_clip()


def test_xclip_adapter_sizes_tokens_and_embeddings(xclip):
    assert isinstance(xclip, ClipAdapter)
    assert (xclip.dim_latent, xclip.dim_text, xclip.image_size, xclip.image_channels, xclip.max_text_len) == (
        16, 32, 32, 3, 12
    )
    tokens = xclip.tokenize(["a red circle", "two blue squares"])
    assert tokens.shape == (2, 12) and tokens.dtype == torch.long
    assert tokens[:, 0].tolist() == [SOT, SOT] and tokens[0, 4].item() == EOT and tokens[0, 5:].eq(0).all()
    et = xclip.embed_text(["a red circle", "two blue squares"])
    torch.testing.assert_close(et.text_embed, xclip.clip.embed_text(tokens).text_embed)
    assert et.text_encodings.shape == (2, 12, 32) and et.text_mask.sum(dim=-1).tolist() == [5, 5]
    torch.testing.assert_close(et.text_embed.norm(dim=-1), torch.ones(2))


def test_xclip_adapter_resizes_images_of_any_size(xclip):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 48)
    ei = xclip.embed_image(images)
    # shorter side to 32 (antialiased bicubic), centre crop 32 x 32
    resized = F.interpolate(images, size=(43, 32), mode="bicubic", antialias=True)[:, :, 5:37]
    torch.testing.assert_close(ei.image_embed, xclip.clip.embed_image(resized).image_embed)
    assert ei.image_encodings.shape == (2, 16, 32)
    torch.testing.assert_close(ei.image_embed.norm(dim=-1), torch.ones(2))
    with pytest.raises(ValueError, match="3-channel"):
        xclip.embed_image(torch.rand(1, 1, 32, 32))


def test_xclip_adapter_rejects_ids_beyond_the_vocabulary():
    clip = CLIP(dim_text=16, dim_image=16, dim_latent=8, num_text_tokens=100, text_enc_depth=1, text_seq_len=8,
                text_heads=2, visual_enc_depth=1, visual_image_size=16, visual_patch_size=8, visual_heads=2)
    with pytest.raises(ValueError, match=r"\[0, 100\) \(num_text_tokens\).*49407"):
        XClipAdapter(clip).embed_text(["a red circle"])


def test_truncation_warns_with_the_number_of_dropped_tokens(xclip):
    prompt = "red " * 15  # 15 words + start + end = 17 tokens for a 12-token context
    with pytest.warns(PromptTruncatedWarning, match="needs 17 tokens.*5 token\\(s\\) were dropped"):
        tokens = xclip.tokenize([prompt])
    assert tokens[0, -1].item() == EOT
    long_ids = torch.cat((xclip.tokenize(["a red circle"]), torch.tensor([[7, 7, 0, 0]])), dim=1)
    with pytest.warns(PromptTruncatedWarning, match="up to 2 non-padding"):
        et = xclip.embed_text(long_ids)
    assert et.text_encodings.shape[1] == 12


def test_frozen_adapters_and_the_wrapping_helper(xclip):
    assert as_clip_adapter(xclip) is xclip
    wrapped = as_clip_adapter(xclip.clip)
    assert isinstance(wrapped, XClipAdapter) and wrapped.clip is xclip.clip
    with pytest.raises(TypeError, match="ClipAdapter"):
        as_clip_adapter(torch.nn.Linear(2, 2))
    frozen = XClipAdapter.from_config(xclip.config)
    assert frozen.config == xclip.config
    frozen.requires_grad_(False)
    out = frozen.embed_image(torch.rand(1, 3, 32, 32, requires_grad=True))
    assert all(not p.requires_grad for p in frozen.parameters())
    out.image_embed.sum().backward()  # gradients still reach the input (CLIP guidance)


def test_open_clip_adapter_matches_open_clips_own_forward(oclip):
    model = oclip.clip
    assert (oclip.dim_latent, oclip.dim_text, oclip.image_size, oclip.max_text_len) == (16, 32, 32, 20)
    tokens = oclip.tokenize(["a red circle", "two blue squares on a green field"])
    assert tokens.shape == (2, 20)
    et = oclip.embed_text(tokens)
    with torch.no_grad():
        ref_embed = model.encode_text(tokens, normalize=True)
        ref_tokens = model.forward_intermediates(text=tokens, text_indices=1, normalize_intermediates=True)
    torch.testing.assert_close(et.text_embed, ref_embed, atol=1e-6, rtol=1e-5)
    mask = et.text_mask
    assert mask.sum(dim=-1).tolist() == [5, 9]  # start, words, end
    states = ref_tokens["text_intermediates"][-1]
    torch.testing.assert_close(et.text_encodings[mask], states[mask], atol=1e-6, rtol=1e-5)
    assert et.text_encodings[~mask].abs().sum() == 0

    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN)[:, None, None]
    std = torch.tensor(open_clip.OPENAI_DATASET_STD)[:, None, None]
    with torch.no_grad():
        ref_image = model.encode_image((images - mean) / std, normalize=True)
    torch.testing.assert_close(oclip.embed_image(images).image_embed, ref_image, atol=1e-6, rtol=1e-5)
    # another size: resized (bicubic, antialiased) before the same forward
    big = F.interpolate(images, size=(64, 64), mode="bilinear")
    expected = model.encode_image((F.interpolate(big, size=(32, 32), mode="bicubic", antialias=True) - mean) / std,
                                  normalize=True)
    torch.testing.assert_close(oclip.embed_image(big).image_embed, expected, atol=1e-6, rtol=1e-5)


def test_open_clip_custom_text_tower_matches_too():
    adapter = tiny_open_clip(force_custom_text=True)
    assert type(adapter.clip).__name__ == "CustomTextCLIP"
    tokens = adapter.tokenize(["a yellow triangle"])
    et = adapter.embed_text(tokens)
    with torch.no_grad():
        ref = adapter.clip.forward_intermediates(text=tokens, text_indices=1, normalize_intermediates=True)
    states = ref["text_intermediates"][-1]
    torch.testing.assert_close(et.text_embed, ref["text_features"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(et.text_encodings[et.text_mask], states[et.text_mask], atol=1e-6, rtol=1e-5)


def test_open_clip_text_inputs(oclip):
    # short id tensors are padded to the context; the DALLE2-pytorch README passes 256 random ids to a 77-token CLIP
    short = oclip.embed_text(torch.tensor([[SOT, 320, EOT]]))
    assert short.text_encodings.shape == (1, 20, 32) and short.text_mask.sum().item() == 3
    torch.testing.assert_close(short.text_embed, oclip.embed_text(["a"]).text_embed)  # "a" is id 320
    with pytest.warns(PromptTruncatedWarning):
        assert oclip.embed_text(torch.randint(1, 49408, (2, 30))).text_embed.shape == (2, 16)
    with pytest.raises(ValueError, match=r"\[0, 49408\)"):
        oclip.embed_text(torch.tensor([[SOT, 49408, EOT]]))
    with pytest.warns(PromptTruncatedWarning, match="dropped"):
        oclip.embed_text(["green " * 30])
    with pytest.raises(ValueError, match="integer token ids"):
        oclip.embed_text(torch.rand(1, 5))


def test_open_clip_config_rebuilds_the_adapter(oclip):
    assert oclip.config.name == "ViT-B-32" and oclip.config.pretrained is None
    rebuilt = OpenClipAdapter.from_config(oclip.config.to_dict())
    assert rebuilt.dim_latent == 16 and rebuilt.max_text_len == 20


def test_adapters_hold_each_weight_once_and_deep_copy(xclip, oclip):
    for adapter in (xclip, oclip):
        assert list(adapter.state_dict()) == ["clip." + k for k in adapter.clip.state_dict()]
        twin = copy.deepcopy(adapter)  # EMA and trainers copy whole modules
        torch.testing.assert_close(twin.embed_text(["a cat"]).text_embed, adapter.embed_text(["a cat"]).text_embed)


def test_names_and_tags_are_checked_before_any_download():
    assert openai_to_open_clip_name("ViT-B/32") == "ViT-B-32"
    assert openai_to_open_clip_name("ViT-L/14@336px") == "ViT-L-14-336"
    assert openai_to_open_clip_name("RN50x4") == "RN50x4"
    with pytest.raises(ValueError, match="no model architecture 'ViT-B-33'.*ViT-B-32"):
        OpenClipAdapter("ViT-B-33", pretrained=None)
    with pytest.raises(ValueError, match="'not-a-tag'.*tags: openai"):
        OpenClipAdapter("ViT-B-32", pretrained="not-a-tag")


def test_offline_without_cached_weights_raises_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ClipWeightsUnavailable, match="'ViT-B-32' \\(pretrained='openai'\\)"):
        OpenAIClipAdapter("ViT-B/32", cache_dir=str(tmp_path))
    with pytest.raises(ClipWeightsUnavailable, match="'ViT-L-14' \\(pretrained='laion2b_s32b_b82k'\\)"):
        OpenClipAdapter("ViT-L-14", pretrained="laion2b_s32b_b82k", cache_dir=str(tmp_path))
