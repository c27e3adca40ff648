"""KarloCascade and StandardizedPrior sampling: samplers per stage, guidance inputs, generators, checkpoints."""

import pytest
import torch
from fixtures.karlo import loader as kf

from dalle2_core.checkpoint import load_component, save_component
from dalle2_core.conditioning import TextCondition
from dalle2_core.diffusion import SAMPLERS
from dalle2_core.prior import rerank_by_similarity

R = kf.reference()
EMPTY = TextCondition(R["text.empty_text_embed"], R["text.empty_text_encodings"], R["text.empty_text_mask"])
TEXT_EMBED, TEXT_STATES, TEXT_MASK = R["text.text_embed"], R["text.text_encodings"], R["text.text_mask"]
IMAGE_EMBED = R["chain.image_embed"]


@pytest.fixture(scope="module")
def cascade():
    return kf.cascade()


@pytest.fixture(scope="module")
def prior():
    return kf.prior()


def sample(cascade, rows=slice(None), **opts):
    opts = {"steps": (3, 2), "uncond": EMPTY, "generator": torch.Generator().manual_seed(0), **opts}
    return cascade.sample(IMAGE_EMBED[rows], TEXT_STATES[rows], TEXT_MASK[rows], text_embed=TEXT_EMBED[rows], **opts)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_runs_each_stage(cascade, sampler):
    images = sample(cascade, sampler=sampler)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.05
    again = sample(cascade, sampler=sampler)
    assert torch.equal(images, again)  # the generator fixes every draw


def test_samplers_can_differ_per_stage(cascade, monkeypatch):
    used = []
    for name in ("ddim", "dpmpp_sde"):
        run = SAMPLERS[name]
        monkeypatch.setitem(SAMPLERS, name, lambda model, d, x, _run=run, _name=name, **kw: used.append((_name, x.shape[-1])) or _run(model, d, x, **kw))
    mixed = sample(cascade, sampler=("ddim", "dpmpp_sde"))
    assert used == [("ddim", 8), ("dpmpp_sde", 16)]
    assert not torch.allclose(mixed, sample(cascade, sampler="ddim"), atol=1e-3)


def test_an_images_noise_does_not_depend_on_its_batch(cascade):
    both = sample(cascade, generator=[torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    alone = sample(cascade, rows=slice(1, 2), generator=[torch.Generator().manual_seed(2)])
    assert (both[1:] - alone).abs().max() < 1e-5
    assert (both[0] - both[1]).abs().max() > 0.05


def test_super_res_last_runs_the_final_step_only(cascade):
    calls = {"super_res_first": 0, "super_res_last": 0}
    hooks = [getattr(cascade, name).register_forward_hook(lambda m, a, o, n=name: calls.__setitem__(n, calls[n] + 1)) for name in calls]
    steps = []
    try:
        sample(cascade, steps=(3, 4), on_step=lambda stage, i, total, x: steps.append((stage, i, total, tuple(x.shape))))
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"super_res_first": 3, "super_res_last": 1}
    assert steps == [(1, i, 3, (2, 3, 8, 8)) for i in range(3)] + [(2, i, 4, (2, 3, 16, 16)) for i in range(4)]


def test_the_unconditional_branch_is_the_learned_image_vector_and_the_empty_prompt(cascade):
    seen = []
    hook = cascade.decoder.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    try:
        sample(cascade, steps=(1, 1))
    finally:
        hook.remove()
    batched = seen[0]
    # [cond, uncond] in one forward; the context arrives as every attention layer's keys/values, projected once
    assert batched["context"].batch == 4 and batched["context"].kv[0][0].shape[::2] == (4, 9)
    with torch.no_grad():
        null = cascade.text_proj(cascade.text_proj.null_image_embeds(2), EMPTY[0].expand(2, -1), EMPTY[1].expand(2, -1, -1), EMPTY[2].expand(2, -1))
        cond = cascade.text_proj(IMAGE_EMBED, TEXT_EMBED, TEXT_STATES, TEXT_MASK)
        null_kv, cond_kv = (cascade.decoder.encode_context(**c)["context"].kv for c in (null, cond))
    # One batched forward of [cond, uncond] and two separate ones are the same computation, not the same bits: CPU
    # kernels (oneDNN/MKL on AVX-512 machines among them) block their sums by batch size and memory layout, a few
    # float32 ulps per op. These tensors are one or two linear layers deep, so 1e-6 holds them; a row of the wrong
    # branch (the empty prompt for the prompt, the learned vector for the image) differs by more than 1e-2.
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # noqa: E731
    for key in ("context_mask", "added_time_embed"):
        close(batched[key][2:], null[key]), close(batched[key][:2], cond[key])
    for (k, v), (nk, nv), (ck, cv) in zip(batched["context"].kv, null_kv, cond_kv):
        close(k[2:], nk), close(v[2:], nv), close(k[:2], ck), close(v[:2], cv)


def test_guidance_scale_one_needs_no_empty_prompt(cascade):
    seen = []
    hook = cascade.decoder.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["context"].batch), with_kwargs=True)
    try:
        images = sample(cascade, cond_scale=1.0, uncond=None)
    finally:
        hook.remove()
    assert seen == [2, 2, 2] and images.shape == (2, 3, 16, 16)


@pytest.mark.parametrize(
    "opts,message",
    [
        (dict(cond_scale=8.0, uncond=None), "cond_scale=8.0 needs uncond"),
        (dict(steps=(3, 2, 1)), r"3 values but the model has 2 decoder stage\(s\); give 1 or 2"),
        (dict(sampler="euler"), "unknown sampler 'euler'"),
        (dict(uncond=EMPTY._replace(text_embed=EMPTY.text_embed.expand(3, -1))), "uncond has 3 rows; expected 1"),
    ],
)
def test_bad_sampling_options_are_refused(cascade, opts, message):
    with pytest.raises(ValueError, match=message):
        sample(cascade, **opts)


def test_the_unconditioned_super_resolution_stage_ignores_a_guidance_scale(cascade):
    assert torch.equal(sample(cascade, cond_scale=(8.0, 2.0)), sample(cascade, cond_scale=8.0))


def test_cascade_checkpoint_round_trip(cascade, tmp_path):
    save_component(cascade, tmp_path / "decoder")
    loaded = load_component(tmp_path / "decoder")
    assert type(loaded).__name__ == "KarloCascade" and loaded.config == cascade.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), cascade.state_dict().values()))
    # the same weights and seeds, the same computation; reloaded (memory-mapped) tensors may take other kernel paths,
    # a few ulps apart per op: see test_checkpoint.test_round_trip_outputs_are_identical
    torch.testing.assert_close(sample(loaded), sample(cascade), rtol=1e-5, atol=1e-5)


def test_prior_checkpoint_round_trip(prior, tmp_path):
    save_component(prior, tmp_path / "prior")
    loaded = load_component(tmp_path / "prior")
    assert loaded.config == prior.config and torch.equal(loaded.clip_std, prior.clip_std)


def prior_embeds(prior, rows=slice(None), **opts):
    opts = {"num_samples_per_batch": 3, "steps": 4, "uncond": EMPTY, "generator": torch.Generator().manual_seed(0), **opts}
    return prior.sample_embeds(TEXT_EMBED[rows], TEXT_STATES[rows], TEXT_MASK[rows], **opts)


def test_prior_candidates_are_unstandardised_and_per_prompt_reproducible(prior):
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    both = prior_embeds(prior, generator=gens(5, 6))
    assert both.shape == (2, 3, 8)
    alone = prior_embeds(prior, rows=slice(1, 2), generator=gens(6))
    assert (both[1:] - alone).abs().max() < 1e-5
    # the tiny random prior predicts nearly the same x_0 from any x_t: its candidates differ only slightly
    assert (both[0, 0] - both[0, 1]).abs().max() > 1e-6
    # diffusion runs in the standardised space; the output is back in CLIP's scale
    assert prior.standardize(both).abs().max() < 0.5 and (both - prior.clip_mean).abs().max() > 0.05


def test_prior_uncond_broadcasts_one_row(prior):
    one = prior_embeds(prior)
    two = prior_embeds(prior, uncond=EMPTY.expand(2))
    assert torch.equal(one, two)


def test_prior_sample_keeps_the_candidate_closest_to_the_text(prior):
    opts = dict(num_samples_per_batch=3, steps=4, uncond=EMPTY)
    best = prior.sample(TEXT_EMBED, TEXT_STATES, TEXT_MASK, generator=torch.Generator().manual_seed(0), **opts)
    candidates = prior.sample_embeds(TEXT_EMBED, TEXT_STATES, TEXT_MASK, generator=torch.Generator().manual_seed(0), **opts)
    assert torch.equal(best, rerank_by_similarity(candidates, TEXT_EMBED))


def test_prior_refuses_guidance_without_the_empty_prompt_and_bad_shapes(prior):
    with pytest.raises(ValueError, match="cond_scale=4.0 needs uncond"):
        prior_embeds(prior, uncond=None)
    with pytest.raises(ValueError, match=r"num_samples_per_batch must be an int >= 1, got 0"):
        prior_embeds(prior, num_samples_per_batch=0)
    with pytest.raises(ValueError, match=r"text_encodings must have shape \(2, 5, 8\), got \(2, 4, 8\)"):
        prior.net(torch.zeros(2, 8), torch.zeros(2, dtype=torch.long), text_embed=TEXT_EMBED, text_encodings=TEXT_STATES[:, :4])


@pytest.mark.parametrize("strength", [0.0, 0.6])
def test_sampling_puts_a_training_cascade_back_in_training_mode(strength):
    cascade = kf.cascade().train()
    picture = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    images = sample(cascade, init_image=picture, strength=strength)  # 0: nothing re-drawn, the picture returned early
    assert cascade.training and all(m.training for m in cascade.modules())
    assert images.shape == (2, 3, 16, 16) and (strength > 0 or torch.allclose(images, picture, atol=1e-6))


def test_the_cascade_samples_in_bfloat16_on_the_cpu():
    # the 64 -> 256 px resize is antialiased bicubic, which the CPU has no bfloat16 kernel for
    cascade = kf.cascade().to(torch.bfloat16)
    bf = lambda t: t.to(torch.bfloat16) if t.is_floating_point() else t  # noqa: E731
    images = cascade.sample(bf(IMAGE_EMBED), bf(TEXT_STATES), TEXT_MASK, text_embed=bf(TEXT_EMBED), steps=(3, 2),
                            uncond=EMPTY.to(dtype=torch.bfloat16), generator=torch.Generator().manual_seed(0))
    plain = sample(kf.cascade())
    assert images.dtype == torch.bfloat16 and images.shape == plain.shape and torch.isfinite(images).all()
    assert (images.float() - plain).abs().mean() < 0.1  # the same images at bfloat16's precision
