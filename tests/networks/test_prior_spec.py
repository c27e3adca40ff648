"""The DALLE2-pytorch README's three diffusion-prior examples, as written (dalle2_pytorch → dalle2_core, no .cuda())."""

import torch
from test_decoder_spec_examples import spec_clip as readme_clip

from dalle2_core import DiffusionPrior, DiffusionPriorNetwork


def spec_clip():
    return readme_clip(depth=6)


def spec_prior_network():
    return DiffusionPriorNetwork(dim=512, depth=6, dim_head=64, heads=8)


def test_prior_with_clip_from_text_and_images():
    torch.manual_seed(0)
    clip = spec_clip()
    prior_network = spec_prior_network()
    diffusion_prior = DiffusionPrior(net=prior_network, clip=clip, timesteps=100, cond_drop_prob=0.2)

    text = torch.randint(0, 49408, (4, 256))
    images = torch.randn(4, 3, 256, 256)

    loss = diffusion_prior(text, images)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    assert prior_network.learned_query.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip.parameters())  # CLIP is frozen inside the prior

    image_embeds = diffusion_prior.sample(text[:1], cond_scale=2.0, steps=2, generator=torch.Generator().manual_seed(1))
    assert image_embeds.shape == (1, 512) and torch.isfinite(image_embeds).all()
    # of its two candidates (the same noise), sampling keeps the one closest to the CLIP text embedding
    text_embed, text_encodings, text_mask, _ = diffusion_prior.clip.embed_text(text[:1])
    candidates = diffusion_prior.sample_embeds(text_embed, text_encodings, text_mask, cond_scale=2.0, steps=2,
                                               generator=torch.Generator().manual_seed(1))[0]  # (2, 512)
    similarity = torch.nn.functional.cosine_similarity(candidates, text_embed, dim=-1)
    assert torch.equal(image_embeds[0], candidates[similarity.argmax()])
    assert not torch.equal(candidates[0], candidates[1])  # two different candidates to choose from


def test_prior_on_precomputed_clip_embeddings():
    torch.manual_seed(0)
    clip = spec_clip()
    prior_network = spec_prior_network()
    diffusion_prior = DiffusionPrior(
        net=prior_network, clip=clip, timesteps=100, cond_drop_prob=0.2, condition_on_text_encodings=False
    )

    text = torch.randint(0, 49408, (4, 256))
    images = torch.randn(4, 3, 256, 256)

    clip_image_embeds = diffusion_prior.clip.embed_image(images).image_embed
    clip_text_embeds = diffusion_prior.clip.embed_text(text).text_embed
    assert clip_image_embeds.shape == clip_text_embeds.shape == (4, 512)
    for embeds in (clip_image_embeds, clip_text_embeds):  # CLIP embeddings are l2-normalised
        torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(4), rtol=0, atol=1e-5)

    loss = diffusion_prior(text_embed=clip_text_embeds, image_embed=clip_image_embeds)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    # without text encodings the transformer sees only [text embed, time, noised image, query]
    lengths = []
    # sampling encodes the text once as a cached prefix: count its positions too
    prior_network.causal_transformer.register_forward_hook(
        lambda m, args, kwargs, out: lengths.append(args[0].shape[1] + getattr(kwargs.get("prefix"), "length", 0)),
        with_kwargs=True,
    )
    diffusion_prior.sample(text_embed=clip_text_embeds[:1], steps=1)
    assert set(lengths) == {4}


def test_prior_without_clip():
    torch.manual_seed(0)
    prior_network = spec_prior_network()
    diffusion_prior = DiffusionPrior(
        net=prior_network, image_embed_dim=512, timesteps=100, cond_drop_prob=0.2, condition_on_text_encodings=False
    )

    clip_image_embeds = torch.randn(4, 512)
    clip_text_embeds = torch.randn(4, 512)
    given = clip_image_embeds.clone()

    torch.manual_seed(1)
    loss = diffusion_prior(text_embed=clip_text_embeds, image_embed=clip_image_embeds)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.equal(clip_image_embeds, given)  # the peer scaled this tensor in place
    assert diffusion_prior.clip is None
    # one optimiser step lowers the loss of the same draw (timesteps, noise, condition dropout)
    torch.optim.Adam(prior_network.parameters(), lr=1e-4).step()
    torch.manual_seed(1)
    assert diffusion_prior(text_embed=clip_text_embeds, image_embed=clip_image_embeds).item() < loss.item()
