"""The ADM U-Net conditioned on an image embedding alone (Kandinsky 2.2): config checks and call contract."""

import pytest
import torch

from dalle2_core.adm import AdmAttentionConfig, AdmBlocksConfig, AdmConditioningConfig, AdmUnet, AdmUnetConfig


def config(**conditioning) -> AdmUnetConfig:
    return AdmUnetConfig(
        sample_size=8, in_channels=4, out_channels=8, widths=(8, 16), layers_per_block=1,
        conditioning=AdmConditioningConfig(**{"context_dim": 16, "image_embed_dim": 6, "image_tokens": 3, **conditioning}),
        attention=AdmAttentionConfig(levels=(False, True), middle=True, head_dim=8), blocks=AdmBlocksConfig(norm_groups=4),
    )


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return AdmUnet(config()).eval()


def test_the_image_embedding_makes_context_tokens_and_a_time_term(unet):
    embed = torch.randn(2, 6)
    context = unet.image_conditioning.context(embed)
    assert context.shape == (2, 3, 16)
    # token i is features [16 i, 16 (i + 1)) of the projection, LayerNorm'd
    projected = unet.image_conditioning.to_tokens(embed)
    assert torch.allclose(context[:, 1], torch.nn.functional.layer_norm(projected[:, 16:32], (16,), unet.image_conditioning.tokens_norm.weight,
                                                                         unet.image_conditioning.tokens_norm.bias), atol=1e-6)
    assert unet.image_conditioning.time(embed).shape == (2, unet.config.time_embed_dim)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    out = unet(x, t, image_embed=embed)
    assert out.shape == (2, 8, 8, 8)
    assert not torch.allclose(out, unet(x, t, image_embed=embed.flip(0)))  # the embedding matters


def test_call_contract_errors(unet):
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([3])
    with pytest.raises(ValueError, match=r"image_embed must have shape \(1, 6\), got NoneType"):
        unet(x, t)
    with pytest.raises(ValueError, match=r"image_embed must have shape \(1, 6\), got \(1, 5\)"):
        unet(x, t, image_embed=torch.zeros(1, 5))
    with pytest.raises(ValueError, match="makes its context from image_embed: pass no context tokens"):
        unet(x, t, image_embed=torch.zeros(1, 6), context=torch.zeros(1, 3, 16))
    with pytest.raises(ValueError, match="needs the context tokens"):
        unet.encode_context()
    plain = AdmUnet(config(image_embed_dim=None))
    with pytest.raises(ValueError, match="this U-Net takes no image_embed"):
        plain(x, t, context=torch.zeros(1, 3, 16), image_embed=torch.zeros(1, 6))


def test_image_conditioning_needs_attention():
    with pytest.raises(ValueError, match="needs attention layers to read them"):
        AdmUnetConfig(sample_size=8, in_channels=4, widths=(8, 16), conditioning=AdmConditioningConfig(context_dim=16, image_embed_dim=6),
                      blocks=AdmBlocksConfig(norm_groups=4))
    with pytest.raises(ValueError, match="image_tokens must be a positive int, got 0"):
        config(image_tokens=0)
