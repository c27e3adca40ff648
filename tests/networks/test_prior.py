"""DiffusionPrior: learns a toy text→image mapping, guidance, rerank, no in-place edits, configs, CLIP wiring."""

import pytest
import torch

from dalle2_core.clip import CLIP, XClipAdapter
from dalle2_core.diffusion import sample
from dalle2_core.helpers import l2norm
from dalle2_core.prior import DiffusionPrior, DiffusionPriorNetwork, rerank_by_similarity

DIM, N = 16, 16


@pytest.fixture(scope="module")
def toy():
    """A tiny prior trained to map each of 16 text embeds to l2norm(R @ text) for a fixed rotation R."""
    torch.manual_seed(0)
    rotation = torch.linalg.qr(torch.randn(DIM, DIM))[0]
    text = l2norm(torch.randn(N, DIM))
    image = l2norm(text @ rotation.T)
    net = DiffusionPriorNetwork(dim=DIM, depth=1, dim_head=16, heads=2, num_timesteps=100)
    prior = DiffusionPrior(net, image_embed_dim=DIM, timesteps=100, cond_drop_prob=0.1, condition_on_text_encodings=False)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(800):
        idx = torch.randint(0, N, (32,))
        loss = prior(text_embed=text[idx], image_embed=image[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return prior.eval(), text, image


def cos(a, b):
    return (l2norm(a) * l2norm(b)).sum(-1)


@pytest.mark.parametrize("sampler, steps", [("ddpm", None), ("ddim", 20), ("dpmpp", 10), ("dpmpp_sde", 10)])
def test_learns_the_toy_mapping(toy, sampler, steps):
    prior, text, image = toy
    out = prior.sample(text_embed=text, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
    assert out.shape == (N, DIM)
    assert cos(out, image).mean().item() > 0.9
    # the rotated embedding of one prompt is not the answer to another: the prior uses the text
    assert cos(out, image.roll(1, dims=0)).mean().item() < 0.5


def test_one_generator_per_text_matches_sampling_each_text_alone(toy):
    prior, text, _ = toy
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = prior.sample(text_embed=text[:4], num_samples_per_batch=3, sampler="ddpm", steps=8, generator=gens(range(4)))
    alone = [prior.sample(text_embed=text[i : i + 1], num_samples_per_batch=3, sampler="ddpm", steps=8, generator=gens([i]))
             for i in range(4)]
    torch.testing.assert_close(batch, torch.cat(alone), atol=1e-5, rtol=0)


def test_null_condition_is_trained_and_guidance_mixes_both_branches(toy):
    prior, text, image = toy
    noise = torch.randn(N, DIM, generator=torch.Generator().manual_seed(1))
    net, diffusion = prior.net, prior.diffusion
    drop_all = torch.ones(N, dtype=torch.bool)

    def cond(x, t):
        return net(x, t, text_embed=text)

    def uncond(x, t):
        return net(x, t, text_embed=text, cond_drop_mask=drop_all)

    with torch.no_grad():
        unguided = sample(uncond, diffusion, noise, sampler="ddim", steps=20)
        conditional = sample(cond, diffusion, noise, sampler="ddim", steps=20)
        scale = 3.0
        by_hand = sample(lambda x, t: uncond(x, t) + (cond(x, t) - uncond(x, t)) * scale, diffusion, noise, sampler="ddim", steps=20)
    at_1 = prior.denoise(noise, text_embed=text, cond_scale=1.0, sampler="ddim", steps=20)
    at_3 = prior.denoise(noise, text_embed=text, cond_scale=scale, sampler="ddim", steps=20)
    assert torch.equal(at_1, conditional)  # cond_scale 1 is exactly the conditional model
    assert torch.allclose(at_3, by_hand, atol=1e-4)  # guided = uncond + (cond - uncond) * scale
    assert (at_3 - at_1).abs().max().item() > 1e-2
    # the learned null condition does not know the prompt; the conditional model does
    assert cos(unguided, image).mean().item() < 0.5
    assert cos(at_3, image).mean().item() > 0.9


def test_rerank_keeps_the_candidate_closest_to_the_text(toy):
    text_embed = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    candidates = torch.tensor(
        [
            [[0.0, 1.0, 0.0], [5.0, 0.1, 0.0], [1.0, 1.0, 0.0]],  # best: index 1 (cosine, not length)
            [[0.0, 0.2, 0.0], [1.0, 0.0, 0.0], [0.0, 10.0, 1.0]],  # best: index 0
        ]
    )
    assert torch.equal(rerank_by_similarity(candidates, text_embed), candidates[[0, 1], [1, 0]])

    prior, text, _ = toy
    all_candidates = prior.sample_embeds(text, num_samples_per_batch=4, sampler="ddim", steps=8, generator=torch.Generator().manual_seed(3))
    chosen = prior.sample(text_embed=text, num_samples_per_batch=4, sampler="ddim", steps=8, generator=torch.Generator().manual_seed(3))
    assert all_candidates.shape == (N, 4, DIM)
    sims = cos(all_candidates, text[:, None])  # (N, 4)
    best = all_candidates[torch.arange(N), sims.argmax(dim=1)]
    assert torch.equal(chosen, best)
    assert (cos(chosen, text)[:, None] >= sims - 1e-6).all()


def test_never_modifies_the_callers_tensors():
    torch.manual_seed(0)
    net = DiffusionPriorNetwork(dim=DIM, depth=1, dim_head=8, heads=2, max_text_len=4)
    prior = DiffusionPrior(net, image_embed_dim=DIM, timesteps=10, cond_drop_prob=0.5, training_clamp_l2norm=True)
    text_embed, image_embed = l2norm(torch.randn(3, DIM)), l2norm(torch.randn(3, DIM))
    encodings, mask = torch.randn(3, 4, DIM), torch.tensor([[True, True, False, False]] * 3)
    given = [v.clone() for v in (text_embed, image_embed, encodings, mask)]
    prior(text_embed=text_embed, image_embed=image_embed, text_encodings=encodings, text_mask=mask).backward()
    prior.sample(text_embed=text_embed, text_encodings=encodings, text_mask=mask, cond_scale=2.0, steps=3)
    for before, after in zip(given, (text_embed, image_embed, encodings, mask)):
        assert torch.equal(before, after)


def test_image_embeddings_are_scaled_for_diffusion_and_unscaled_after_sampling():
    torch.manual_seed(0)
    net = DiffusionPriorNetwork(dim=DIM, depth=1, dim_head=8, heads=2)
    # 1000 cosine steps: at t = 0 the noise std is sqrt(1 - alpha_bar_0) ≈ 0.006
    prior = DiffusionPrior(net, image_embed_dim=DIM, timesteps=1000, condition_on_text_encodings=False, sampling_final_clamp_l2norm=True)
    assert prior.image_embed_scale == pytest.approx(4.0)
    seen = []
    prior.net.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    x_start = l2norm(torch.randn(2, DIM))
    prior.diffusion.sample_timesteps = lambda b, device=None, generator=None: torch.zeros(b, dtype=torch.long)
    prior(text_embed=torch.randn(2, DIM), image_embed=x_start)
    # at t = 0 the noised input is almost exactly the scaled embedding
    assert torch.allclose(seen[0], x_start * 4.0, atol=0.05)
    assert not torch.allclose(seen[0], x_start, atol=0.5)
    out = prior.sample(text_embed=torch.randn(2, DIM), steps=4, sampler="ddim")
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)  # final l2 clamp, then ÷ scale


@pytest.mark.parametrize("options, objective", [({}, "x0"), ({"predict_x_start": False}, "eps"), ({"predict_v": True}, "v")])
def test_objectives_and_config_round_trip(options, objective):
    torch.manual_seed(0)
    net = DiffusionPriorNetwork(dim=DIM, depth=1, dim_head=8, heads=2, num_timesteps=20)
    prior = DiffusionPrior(net, image_embed_dim=DIM, timesteps=20, sample_timesteps=5, loss_type="l1", condition_on_text_encodings=False, **options)
    assert prior.diffusion.objective == objective
    loss = prior(text_embed=torch.randn(2, DIM), image_embed=torch.randn(2, DIM))
    assert torch.isfinite(loss) and loss.item() > 0
    clone = DiffusionPrior.from_config(prior.config.to_dict())
    assert clone.config == prior.config and clone.net.config == prior.net.config
    clone.load_state_dict(prior.state_dict())
    noise = torch.randn(2, DIM)
    text_embed = torch.randn(2, DIM)
    assert torch.equal(clone.denoise(noise, text_embed=text_embed, sampler="ddim"), prior.denoise(noise, text_embed=text_embed, sampler="ddim"))


def test_raw_clip_is_wrapped_frozen_and_embeds_text_and_images():
    torch.manual_seed(0)
    clip = CLIP(dim_text=16, dim_image=16, dim_latent=16, text_enc_depth=1, text_seq_len=8, text_heads=2, visual_enc_depth=1, visual_image_size=16, visual_patch_size=8, visual_heads=2)
    net = DiffusionPriorNetwork(dim=16, depth=1, dim_head=8, heads=2, max_text_len=8)
    prior = DiffusionPrior(net, clip=clip, timesteps=10, cond_drop_prob=0.2)
    assert isinstance(prior.clip, XClipAdapter)
    assert prior.config.image_embed_dim == 16 and prior.config.image_size == 16
    assert not any(p.requires_grad for p in prior.clip.parameters())
    prior.train()
    assert not prior.clip.training and prior.net.training
    text, images = torch.randint(1, 1000, (2, 8)), torch.rand(2, 3, 16, 16)
    loss = prior(text, images)
    loss.backward()
    assert loss.item() > 0
    assert prior.net.learned_query.grad.abs().sum() > 0 and prior.net.null_text_encodings.grad is not None
    out = prior.sample(text, cond_scale=2.0, steps=3)
    assert out.shape == (2, 16)
    rebuilt = DiffusionPrior.from_config(prior.config.to_dict(), clip=prior.clip)
    assert rebuilt.clip is prior.clip
    # DALLE2-pytorch's XClipAdapter stored clip_adapter_overrides and never read them (only its CoCa
    # adapter did); the adapter here takes every size from the CLIP, so the option does not exist
    for overrides in ({"image_size": 32}, {}):
        with pytest.raises(TypeError, match=r"DiffusionPrior got unknown option\(s\) 'clip_adapter_overrides'; accepted: "):
            DiffusionPrior(net, clip=clip, clip_adapter_overrides=overrides)


def test_bad_arguments_name_what_is_wrong():
    net = DiffusionPriorNetwork(dim=DIM, depth=1, dim_head=8, heads=2)
    with pytest.raises(ValueError, match="clip= or image_embed_dim="):
        DiffusionPrior(net)
    with pytest.raises(ValueError, match="image_embed_dim 32 must equal the prior network's dim 16"):
        DiffusionPrior(net, image_embed_dim=32)
    with pytest.raises(TypeError, match=r"network option\(s\) \['depth'\]"):
        DiffusionPrior(net, image_embed_dim=DIM, depth=2)
    with pytest.raises(TypeError, match="'timestep'"):
        DiffusionPrior(net, image_embed_dim=DIM, timestep=2)
    with pytest.raises(ValueError, match="unknown beta_schedule 'cosin'"):
        DiffusionPrior(net, image_embed_dim=DIM, beta_schedule="cosin")
    prior = DiffusionPrior(net, image_embed_dim=DIM, timesteps=10)
    with pytest.raises(ValueError, match="text_encodings"):
        prior(text_embed=torch.randn(2, DIM), image_embed=torch.randn(2, DIM))
    with pytest.raises(ValueError, match="needs a CLIP"):
        prior(torch.randint(0, 10, (2, 4)), image_embed=torch.randn(2, DIM))
    with pytest.raises(ValueError, match="cond_scale=3.0 needs a prior trained with conditional dropout"):
        prior.sample(text_embed=torch.randn(2, DIM), text_encodings=torch.randn(2, 3, DIM), cond_scale=3.0, steps=2)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        prior.sample(text_embed=torch.randn(2, DIM), text_encodings=torch.randn(2, 3, DIM), sampler="euler", steps=2)
