"""The DALLE2-pytorch README's "OpenAI CLIP" example (`dalle2_pytorch` -> `dalle2_core`, `.cuda()` dropped).

It needs OpenAI's ViT-B/32 weights, which open_clip downloads from the Hugging Face Hub: without
them in the local cache (this test runs offline) it is skipped with that reason. The decoder's
sampling steps are respaced to 4 (`sample_timesteps`) so the 256 px cascade samples in seconds.
"""

import pytest
import torch
from test_decoder_spec_examples import assert_only_the_heads_learned

from dalle2_core import DALLE2, Decoder, DiffusionPrior, DiffusionPriorNetwork, OpenAIClipAdapter, Unet
from dalle2_core.clip import ClipWeightsUnavailable


def test_readme_openai_clip_example():
    try:
        clip = OpenAIClipAdapter()  # openai pretrained clip - defaults to ViT/B-32
    except ClipWeightsUnavailable as err:
        pytest.skip(f"OpenAI ViT-B/32 weights are not in the local cache ({err})")

    text = torch.randint(0, 49408, (4, 256))
    images = torch.randn(4, 3, 256, 256)

    prior_network = DiffusionPriorNetwork(dim=512, depth=6, dim_head=64, heads=8)
    diffusion_prior = DiffusionPrior(net=prior_network, clip=clip, timesteps=100, cond_drop_prob=0.2)
    loss = diffusion_prior(text, images)
    loss.backward()
    assert torch.isfinite(loss)

    unet1 = Unet(dim=128, image_embed_dim=512, cond_dim=128, channels=3, dim_mults=(1, 2, 4, 8))
    unet2 = Unet(dim=16, image_embed_dim=512, cond_dim=128, channels=3, dim_mults=(1, 2, 4, 8, 16))
    decoder = Decoder(
        unet=(unet1, unet2),
        image_sizes=(128, 256),
        clip=clip,
        timesteps=100,
        sample_timesteps=4,  # not in the README: see the module docstring
        image_cond_drop_prob=0.1,
        text_cond_drop_prob=0.5,
        condition_on_text_encodings=False,
    )
    for unet_number in (1, 2):
        loss = decoder(images, unet_number=unet_number)
        loss.backward()
        assert torch.isfinite(loss)
    assert_only_the_heads_learned(decoder, (1, 2))
    embeds = clip.embed_text(text[:2]).text_embed, clip.embed_image(images[:2]).image_embed
    for embed in embeds:  # OpenAI CLIP embeddings, l2-normalised
        torch.testing.assert_close(embed.norm(dim=-1), torch.ones(2), rtol=0, atol=1e-5)

    dalle2 = DALLE2(prior=diffusion_prior, decoder=decoder)
    images = dalle2(["a butterfly trying to escape a tornado"], cond_scale=2.0)
    assert images.shape == (1, 3, 256, 256) and 0 <= images.min() and images.max() <= 1
