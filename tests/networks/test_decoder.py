"""Decoder: overfitting one image, per-unet training isolation, cascade shapes, guidance, inpainting."""

import json

import pytest
import torch

from dalle2_core import Decoder, Unet
from dalle2_core.diffusion import classifier_free_guidance, dynamic_thresholding, sample
from dalle2_core.helpers import l2norm

EMBED_DIM = 8


def tiny_unet(**kwargs):
    opts = dict(dim=16, image_embed_dim=EMBED_DIM, dim_mults=(1, 2), num_resnet_blocks=1, attn_heads=2, attn_dim_head=8)
    return Unet(**{**opts, **kwargs})


def target_image():
    """A red square on a blue-ish background, 16 px."""
    img = torch.zeros(1, 3, 16, 16)
    img[:, 0, 4:12, 4:12] = 1.0
    img[:, 2] = 0.3
    return img


def embed(b=1, seed=1):
    return l2norm(torch.randn(b, EMBED_DIM, generator=torch.Generator().manual_seed(seed)))


@pytest.fixture(scope="module")
def overfit():
    """x0 objective, no learned variance, no condition dropout; 100 Adam steps on 4 copies of one image."""
    torch.manual_seed(0)
    decoder = Decoder(
        unet=tiny_unet(), image_size=16, timesteps=100, predict_x_start=True, learned_variance=False,
        image_cond_drop_prob=0.0, text_cond_drop_prob=0.0,
    )
    images, e = target_image().repeat(4, 1, 1, 1), embed().repeat(4, 1)
    opt = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = decoder(images, image_embed=e)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return decoder.eval(), losses


def test_overfits_one_image_and_samples_it(overfit):
    decoder, losses = overfit
    assert losses[0] > 0.3 and sum(losses[-10:]) / 10 < 1e-3
    target = target_image()
    for sampler, steps in (("ddim", 20), ("ddpm", None), ("dpmpp", 10), ("dpmpp_sde", 10)):
        out = decoder.sample(embed(2), sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
        assert out.shape == (2, 3, 16, 16)
        assert 0.0 <= out.min() and out.max() <= 1.0
        assert ((out - target) ** 2).mean() < 0.01, sampler


def test_same_generator_same_images(overfit):
    decoder, _ = overfit
    a = decoder.sample(embed(1), sampler="ddpm", steps=10, generator=torch.Generator().manual_seed(3))
    b = decoder.sample(embed(1), sampler="ddpm", steps=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_cond_scale_one_is_the_conditional_model(overfit):
    decoder, _ = overfit
    unet, e = decoder.unets[0], embed(2, seed=5)

    def conditional(x, t):
        return unet(x, t, image_embed=e)

    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = sample(conditional, decoder.diffusions[0], noise, sampler="ddim", steps=8,
                      denoise_fn=dynamic_thresholding(0.95))
    for scale in (1.0, (1.0,)):
        got = decoder.sample(e, sampler="ddim", steps=8, cond_scale=scale, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(got, ((expected + 1) / 2).clamp(0, 1), rtol=0, atol=1e-6)
    guided = decoder.sample(e, sampler="ddim", steps=8, cond_scale=3.0, generator=torch.Generator().manual_seed(0))
    assert (guided - got).abs().max() > 1e-4
    # the guided model really is uncond + 3 (cond - uncond)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 50])
    cond = unet(x, t, image_embed=e)
    uncond = unet(x, t, image_embed=e, cond_drop_mask=torch.ones(2, dtype=torch.bool))
    mixed = classifier_free_guidance(unet, 3.0, guide_variance=True, image_embed=e)(x, t)
    torch.testing.assert_close(mixed, uncond + 3 * (cond - uncond), rtol=1e-5, atol=1e-5)


def test_inpainting_keeps_known_region_exact(overfit):
    decoder, _ = overfit
    known = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[:, :, :8] = True  # the left half is given
    out = decoder.sample(embed(2), sampler="ddpm", steps=6, inpaint_image=known, inpaint_mask=mask,
                         inpaint_resample_times=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, :, :8], known[:, :, :, :8])
    # the unknown half is generated: the decoder reproduces its training image there
    assert ((out[:, :, :, 8:] - target_image()[:, :, :, 8:]) ** 2).mean() < 0.02
    out_ddim = decoder.sample(embed(2), sampler="ddim", steps=5, inpaint_image=known, inpaint_mask=mask,
                              inpaint_resample_times=2)
    assert torch.equal(out_ddim[:, :, :, :8], known[:, :, :, :8])
    with pytest.raises(ValueError, match="inpainting supports samplers"):
        decoder.sample(embed(2), sampler="dpmpp", steps=4, inpaint_image=known, inpaint_mask=mask)
    with pytest.raises(ValueError, match="both inpaint_image"):
        decoder.sample(embed(2), inpaint_image=known)


def two_stage(**kwargs):
    torch.manual_seed(0)
    return Decoder(
        unet=(tiny_unet(), tiny_unet(dim=8)), image_sizes=(16, 32), timesteps=20, image_embed_dim=EMBED_DIM, **kwargs
    )


def test_training_one_unet_leaves_the_other_bit_identical():
    decoder = two_stage()
    images = torch.rand(2, 3, 32, 32)
    for trained, frozen in ((1, 2), (2, 1)):
        opt = torch.optim.AdamW(decoder.parameters(), lr=1e-2)
        before = {k: v.clone() for k, v in decoder.get_unet(frozen).state_dict().items()}
        trained_before = {k: v.clone() for k, v in decoder.get_unet(trained).state_dict().items()}
        opt.zero_grad()
        decoder(images, image_embed=embed(2), unet_number=trained).backward()
        assert all(p.grad is None for p in decoder.get_unet(frozen).parameters())
        opt.step()
        after = decoder.get_unet(frozen).state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        changed = sum(not torch.equal(trained_before[k], v) for k, v in decoder.get_unet(trained).state_dict().items())
        assert changed > 0


def test_train_mode_keeps_frozen_parts_in_eval_and_sample_restores_it():
    decoder = two_stage().train()
    assert decoder.unets.training and not decoder.vaes.training
    decoder.sample(embed(1), steps=2)
    assert decoder.training and decoder.unets[0].training


def test_unet_number_is_required_and_checked():
    decoder = two_stage()
    images = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="pass unet_number"):
        decoder(images, image_embed=embed(1))
    with pytest.raises(ValueError, match="accepted: 1..2"):
        decoder(images, image_embed=embed(1), unet_number=3)
    with pytest.raises(ValueError, match="trains at 32px"):
        decoder(torch.rand(1, 3, 16, 16), image_embed=embed(1), unet_number=2)


def test_cascade_adapts_unets():
    decoder = two_stage()
    u1, u2 = decoder.unets
    assert (u1.lowres_cond, u2.lowres_cond) == (False, True)
    assert (u1.cond_on_image_embeds, u2.cond_on_image_embeds) == (True, False)
    assert (u1.channels_out, u2.channels_out) == (6, 3)  # learned variance on the base unet only
    assert decoder.learned_variance == (True, False)


def test_cascade_shapes_with_start_and_stop():
    decoder = two_stage().eval()
    e = embed(2)
    full = decoder.sample(e, steps=3, generator=torch.Generator().manual_seed(0))
    assert full.shape == (2, 3, 32, 32)
    low = decoder.sample(e, steps=3, stop_at_unet_number=1, generator=torch.Generator().manual_seed(0))
    assert low.shape == (2, 3, 16, 16)
    # starting at the upsampler from the base output gives the same images as the full cascade
    gen = torch.Generator().manual_seed(0)
    decoder.sample(e, steps=3, stop_at_unet_number=1, generator=gen)  # advance the generator the same way
    up = decoder.sample(e, steps=3, start_at_unet_number=2, start_image_or_video=low, generator=gen)
    torch.testing.assert_close(up, full)
    with pytest.raises(ValueError, match="needs start_image_or_video"):
        decoder.sample(e, steps=3, start_at_unet_number=2)
    with pytest.raises(ValueError, match=r"3 values but the model has 2 decoder stage\(s\); give 1 or 2"):
        decoder.sample(e, steps=(3, 3, 3))
    steps_seen = []
    decoder.sample(e, steps=(4, 2), on_step=lambda n, i, total, x: steps_seen.append((n, i, total)))
    assert steps_seen == [(1, 0, 4), (1, 1, 4), (1, 2, 4), (1, 3, 4), (2, 0, 2), (2, 1, 2)]


def test_one_generator_per_image_gives_each_image_its_own_noise():
    # lowres noise augmentation on, ddpm: every random draw of the cascade goes through the generators
    decoder = two_stage(use_noise_for_lowres_cond=True).eval()
    e = embed(3, seed=4)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = decoder.sample(e, sampler="ddpm", steps=3, generator=gens([5, 6, 7]))
    alone = torch.cat([decoder.sample(e[i : i + 1], sampler="ddpm", steps=3, generator=gens([5 + i])) for i in range(3)])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)
    swapped = decoder.sample(e, sampler="ddpm", steps=3, generator=gens([7, 6, 5]))
    torch.testing.assert_close(swapped[1], batch[1], atol=1e-5, rtol=0)
    assert (swapped[0] - batch[0]).abs().max() > 0.05  # another seed, another image
    with pytest.raises(ValueError, match="2 generators cannot split 3 rows"):
        decoder.sample(e, steps=2, generator=gens([0, 1]))


def test_upsampler_lowres_augmentation_and_random_crop():
    decoder = two_stage(use_noise_for_lowres_cond=True, random_crop_sizes=(None, 16), blur_prob=1.0)
    assert decoder.unets[1].lowres_noise_cond and not decoder.unets[0].lowres_noise_cond
    images = torch.rand(2, 3, 32, 32)
    torch.manual_seed(0)
    loss, lowres = decoder(images, image_embed=embed(2), unet_number=2, return_lowres_cond_image=True)
    assert torch.isfinite(loss) and lowres.shape == (2, 3, 16, 16)  # cropped like the target
    assert decoder.sample(embed(2), steps=2).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="cannot be trained on random crops"):
        two_stage(random_crop_sizes=(8, 16))


def test_lowres_conditioning_degrades_then_noises():
    decoder = two_stage(use_noise_for_lowres_cond=True, blur_prob=0.0)
    conditioner = decoder.lowres_conds[1]
    images = torch.rand(3, 3, 32, 32)
    torch.manual_seed(0)
    cond, levels = conditioner.for_training(images, target_size=32, lowres_size=16)
    assert cond.shape == (3, 3, 32, 32) and levels.shape == (3,) and len(set(levels.tolist())) == 3
    clean, none = two_stage(blur_prob=0.0).lowres_conds[1].for_training(images, target_size=32, lowres_size=16)
    assert none is None
    # without noise: nearest down to 16 px and back, i.e. each 2x2 block holds its top-left pixel
    torch.testing.assert_close(clean, images[..., ::2, ::2].repeat_interleave(2, -1).repeat_interleave(2, -2))
    _, fixed = conditioner.for_sampling(images[..., ::2, ::2], target_size=32)
    assert fixed.tolist() == [200, 200, 200]  # lowres_noise_sample_level 0.2 of 1000 steps


def test_learned_variance_fraction_can_be_constrained():
    torch.manual_seed(0)
    decoder = Decoder(unet=tiny_unet(), image_size=16, timesteps=20, learned_variance_constrain_frac=True)
    unet = decoder.unets[0]
    torch.nn.init.normal_(unet.to_out.weight, std=0.5)  # outputs well outside [-1, 1]
    x, t, e = torch.randn(2, 3, 16, 16), torch.tensor([3, 10]), embed(2)
    raw, out = unet(x, t, image_embed=e), decoder._network(0)(x, t, image_embed=e)
    frac = (out[:, 3:] + 1) / 2
    torch.testing.assert_close(frac, torch.sigmoid((raw[:, 3:] + 1) / 2))
    assert raw[:, 3:].abs().max() > 2 and 0 < frac.min() and frac.max() < 1
    assert torch.equal(out[:, :3], raw[:, :3])
    assert torch.isfinite(decoder(torch.rand(2, 3, 16, 16), image_embed=e))


def test_text_conditioning_is_required_when_configured():
    decoder = two_stage(condition_on_text_encodings=True, text_embed_dim=8)
    assert decoder.unets[0].cond_on_text_encodings and not decoder.unets[1].cond_on_text_encodings
    images, text = torch.rand(2, 3, 32, 32), torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    assert torch.isfinite(decoder(images, image_embed=embed(2), text_encodings=text, text_mask=mask, unet_number=1))
    with pytest.raises(ValueError, match="conditioned on text"):
        decoder(images, image_embed=embed(2), unet_number=1)
    out = decoder.sample(embed(2), text_encodings=text, text_mask=mask, steps=2, cond_scale=2.0)
    assert out.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="not conditioned on text"):
        two_stage().sample(embed(2), text_encodings=text, steps=2)


def test_text_conditioning_declared_by_an_upsampler_only():
    torch.manual_seed(0)
    decoder = Decoder(unet=(tiny_unet(), tiny_unet(dim=8, text_embed_dim=8, cond_on_text_encodings=True)),
                      image_sizes=(16, 32), timesteps=20, image_embed_dim=EMBED_DIM, condition_on_text_encodings=True)
    assert [u.cond_on_text_encodings for u in decoder.unets] == [False, True]  # as in DALLE2-pytorch
    assert decoder.config.conditioning.condition_on_text_encodings
    rebuilt = Decoder.from_config(decoder.config.to_dict())
    assert [u.cond_on_text_encodings for u in rebuilt.unets] == [False, True]
    rebuilt.load_state_dict(decoder.state_dict())
    # an unflagged decoder still records that its upsampler needs text
    torch.manual_seed(0)
    unflagged = Decoder(unet=(tiny_unet(), tiny_unet(dim=8, text_embed_dim=8, cond_on_text_encodings=True)),
                        image_sizes=(16, 32), timesteps=20, image_embed_dim=EMBED_DIM)
    assert unflagged.config == decoder.config


def test_config_round_trip_rebuilds_the_same_decoder():
    decoder = two_stage(learned_variance=(True, True), beta_schedule=("cosine", "linear"), sample_timesteps=(5, 3),
                        predict_v=(False, True), use_dynamic_thres=False)
    data = json.loads(json.dumps(decoder.config.to_dict()))
    rebuilt = Decoder.from_config(data)
    assert rebuilt.config == decoder.config
    rebuilt.load_state_dict(decoder.state_dict())
    a = decoder.eval().sample(embed(1), generator=torch.Generator().manual_seed(0))
    b = rebuilt.eval().sample(embed(1), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert [d.objective for d in rebuilt.diffusions] == ["eps", "v"]
    assert rebuilt.diffusions[1].betas[0] == pytest.approx(1e-4 * 1000 / 20)  # linear, scaled to 20 steps


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="unique and ascending"):
        Decoder(unet=(tiny_unet(), tiny_unet()), image_sizes=(32, 16))
    with pytest.raises(ValueError, match="2 unet\\(s\\) need 2 image size"):
        Decoder(unet=(tiny_unet(), tiny_unet()), image_sizes=(16,))
    with pytest.raises(TypeError, match="unknown option"):
        Decoder(unet=tiny_unet(), image_size=16, not_an_option=1)
    with pytest.raises(ValueError, match="give image_size"):
        Decoder(unet=tiny_unet())
    with pytest.raises(ValueError, match="beta_schedule 'nope'"):
        Decoder(unet=tiny_unet(), image_size=16, beta_schedule="nope")
    with pytest.raises(ValueError, match="image_embed_dim=8, but the decoder's embeddings are 16"):
        Decoder(unet=tiny_unet(), image_size=16, image_embed_dim=16)


def test_per_unet_options_take_one_value_or_one_per_unet():
    decoder = two_stage(sample_timesteps=(4,), p2_loss_weight_gamma=0.5, predict_v=(False, True), learned_variance=(True,))
    config = decoder.config
    assert config.option_per_unet("diffusion", "sample_timesteps") == (4, 4)  # one value serves every unet
    assert config.option_per_unet("diffusion", "p2_loss_weight_gamma") == (0.5, 0.5)
    assert config.objectives() == ("eps", "v") and [d.objective for d in decoder.diffusions] == ["eps", "v"]
    # learned_variance alone (bare or as the one value of a tuple) is the base unet's, as in the paper
    assert decoder.learned_variance == (True, False) and decoder.unets[0].channels_out == 6
    assert config.per_unet([1.5], "cond_scale") == (1.5, 1.5) and config.per_unet((1, 2), "steps") == (1, 2)
    with pytest.raises(ValueError, match=r"^cond_scale \(1, 2, 3\) needs one value or one per unet \(2\), got 3$"):
        config.per_unet((1, 2, 3), "cond_scale")
    with pytest.raises(ValueError, match=r"beta_schedule \('cosine', 'linear', 'cosine'\) needs one value or one per unet"):
        two_stage(beta_schedule=("cosine", "linear", "cosine"))
    with pytest.raises(ValueError, match=r"3,3,3 has 3 values but the model has 2 decoder stage\(s\)"):
        decoder.sample(embed(1), steps=(3, 3, 3))


def test_dalle2_pytorch_spellings_map_onto_options_and_must_agree():
    decoder = Decoder(unet=tiny_unet(), image_size=16, use_dynamic_thres=False, dynamic_thres_percentile=0.9)
    c = decoder.config
    assert c.image_sizes == (16,) and not c.conditioning.dynamic_thresholding
    assert c.conditioning.dynamic_thresholding_percentile == 0.9
    assert Decoder(unet=tiny_unet(), image_size=16, image_sizes=[16]).config.image_sizes == (16,)
    with pytest.raises(ValueError, match=r"image_size=32 contradicts image_sizes=\(16,\)"):
        Decoder(unet=tiny_unet(), image_size=32, image_sizes=(16,))
    with pytest.raises(ValueError, match="use_dynamic_thres=True contradicts dynamic_thresholding=False"):
        Decoder(unet=tiny_unet(), image_size=16, use_dynamic_thres=True, dynamic_thresholding=False)
    with pytest.raises(ValueError, match="use_convnext=True contradicts block_type='resnet'"):
        tiny_unet(use_convnext=True, block_type="resnet")
    assert tiny_unet(use_convnext=True).config.blocks.block_type == "convnext"
    assert tiny_unet(learned_sigma=True).learned_variance


def test_one_unet_in_gpu_on_cpu_is_harmless():
    decoder = two_stage()
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    with decoder.one_unet_in_gpu(2):
        loss = decoder(torch.rand(1, 3, 32, 32), image_embed=embed(1), unet_number=2)
    with decoder.one_unet_in_gpu(unet=decoder.unets[0]):
        pass
    assert torch.isfinite(loss)
    assert all(p.device.type == "cpu" for p in decoder.parameters())
    assert all(torch.equal(before[k], v) for k, v in decoder.state_dict().items())
    with pytest.raises(ValueError, match="exactly one"):
        with decoder.one_unet_in_gpu():
            pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an accelerator")
def test_one_unet_in_gpu_moves_the_others_to_cpu_and_back():
    decoder = two_stage().to("cuda")
    with decoder.one_unet_in_gpu(2):
        assert next(decoder.unets[0].parameters()).device.type == "cpu"
        assert next(decoder.unets[1].parameters()).device.type == "cuda"
    assert all(p.device.type == "cuda" for p in decoder.unets.parameters())
