"""Starting from pictures through the pipeline: img2img (SDEdit), inpainting (RePaint), upscaling, weighted mixes."""

import pytest
import torch
from helpers.checkpoint_tiny import save_tiny_model

from dalle2_core.dalle2 import mix_embeddings, slerp
from dalle2_core.diffusion import GaussianDiffusion, truncated_diffusion
from dalle2_core.helpers import l2norm
from dalle2_core.pipeline import ImageEdit, load_pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return load_pipeline(save_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


def gens(seed=0, n=2):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def picture(seed=3, n=1, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_sdedit_keeps_the_first_steps_of_the_schedule():
    d = GaussianDiffusion.from_schedule("cosine", 1000).respace(10)
    half = truncated_diffusion(d, 0.5)
    assert half.num_timesteps == 5 and torch.equal(half.timestep_map, d.timestep_map[:5])
    assert torch.equal(half.alphas_cumprod, d.alphas_cumprod[:5]) and truncated_diffusion(d, 0.0) is None


def test_settings_for_inpainting_take_a_sampler_repaint_runs_with(pipeline, monkeypatch):
    import dataclasses

    from dalle2_core.pipeline import SettingError

    assert pipeline.resolve(inpainting=True).sampler == "ddim"  # the folder's default inpaints: kept
    monkeypatch.setattr(pipeline, "defaults", dataclasses.replace(pipeline.defaults, sampler="dpmpp_sde"))
    assert pipeline.resolve(inpainting=True).sampler == "ddpm" and pipeline.resolve().sampler == "dpmpp_sde"
    assert pipeline.resolve(inpainting=True, sampler="ddim").sampler == "ddim"
    assert pipeline.resolve(sampler="dpmpp").sampler == "dpmpp"  # without a mask any sampler
    with pytest.raises(SettingError, match="inpainting supports samplers ddpm, ddim; got 'dpmpp'") as err:
        pipeline.resolve(inpainting=True, sampler="dpmpp")
    assert err.value.setting == "sampler"


def test_strength_0_returns_the_image_and_1_is_plain_generation(pipeline):
    s = pipeline.resolve()
    init = picture()
    kept = pipeline.generate(["a cube", "a ball"], s, generator=gens(), edit=ImageEdit(init, strength=0.0))
    assert torch.equal(kept, init.expand(2, -1, -1, -1))  # nothing re-drawn, pixel for pixel
    plain = pipeline.generate(["a cube", "a ball"], s, generator=gens())
    full = pipeline.generate(["a cube", "a ball"], s, generator=gens(), edit=ImageEdit(init, strength=1.0))
    assert torch.equal(full, plain)
    half = pipeline.generate(["a cube", "a ball"], s, generator=gens(), edit=ImageEdit(init, strength=0.5))
    # part of the way: nearer the picture than a fresh image is, yet not the picture
    assert 0 < (half - init).abs().mean() < (plain - init).abs().mean()


def test_inpainting_keeps_everything_outside_the_mask(pipeline):
    s = pipeline.resolve(sampler="ddpm")
    init = picture()
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[:, 8:24, 16:] = True  # regenerate this box
    out = pipeline.generate(["a cube"], s, generator=gens(n=1), edit=ImageEdit(init, mask=mask))
    assert torch.equal(out[0][:, ~mask[0]], init[0][:, ~mask[0]])
    assert (out[0][:, mask[0]] - init[0][:, mask[0]]).abs().mean() > 0.05
    with pytest.raises(ValueError, match="inpainting supports samplers ddpm, ddim"):
        pipeline.generate(["a cube"], pipeline.resolve(sampler="dpmpp"), edit=ImageEdit(init, mask=mask))
    with pytest.raises(ValueError, match="strength applies to img2img without a mask"):
        pipeline.generate(["a cube"], s, edit=ImageEdit(init, strength=0.5, mask=mask))


def test_upscale_runs_only_the_super_resolution_stages(pipeline):
    s = pipeline.resolve()
    small = picture(size=40)  # any size: resized to the first stage's 16 px, antialiased
    seen = []
    out = pipeline.upscale(small, s, generator=gens(n=1), on_step=lambda stage, i, total, x: seen.append(stage))
    assert out.shape == (1, 3, 32, 32) and set(seen) == {"unet 2"}
    from dalle2_core.clip import resize_center_crop

    direct = pipeline.decoder.sample(batch_size=1, start_at_unet_number=2, steps=s.steps, cond_scale=s.cond_scale,
                                     sampler=s.sampler, start_image_or_video=resize_center_crop(small, 16).clamp(0, 1),
                                     generator=gens(n=1))
    torch.testing.assert_close(out, direct, rtol=0, atol=0)


def test_mix_embeddings_lie_on_the_arc_between_the_items():
    a, b = l2norm(torch.randn(1, 8)), l2norm(torch.randn(1, 8))
    torch.testing.assert_close(mix_embeddings(torch.cat([a, b]), [1.0, 1.0]), slerp(a, b, 0.5))
    toward_a = mix_embeddings(torch.cat([a, b]), [3.0, 1.0])
    assert (toward_a * a).sum() > (toward_a * b).sum()
    torch.testing.assert_close(mix_embeddings(torch.cat([a, 2 * a]), [1.0, 5.0]), a)
    with pytest.raises(ValueError, match="weights"):
        mix_embeddings(torch.cat([a, b]), [1.0, 0.0])


def test_mix_of_prompts_and_pictures_decodes_the_mixed_embedding(pipeline):
    s = pipeline.resolve()
    image = picture(size=16)
    out = pipeline.mix([("a red cube", 0.7), (image, 0.3)], s, num_images=2, seed=5, generator=gens())
    assert out.shape == (2, 3, 32, 32)
    text = pipeline.encode_text(["a red cube"])
    prompt_embed = pipeline.sample_prior(text, s, generator=[torch.Generator().manual_seed(5)])
    mixed = mix_embeddings(torch.cat([prompt_embed, pipeline.embed_images(image)]), [0.7, 0.3]).expand(2, -1)
    torch.testing.assert_close(out, pipeline.decode(mixed, None, s, generator=gens()))


def test_sdedit_truncates_the_respaced_schedule_with_its_numerics_options():
    # Karlo's decoder schedule (float32 betas, unclipped minimum log-variance): SDEdit samples the first steps of the
    # very diffusion plain sampling respaces. A copy rebuilt from alpha_bar alone, as img2img once used, loses both
    # options: its log-variance at the cleanest step is the clipped one, and its betas come back in float64.
    from dalle2_core.families.karlo.cascade import karlo_decoder_diffusion

    respaced = karlo_decoder_diffusion().to_diffusion().respace(25)
    first = truncated_diffusion(respaced, 0.4)
    assert first.num_timesteps == 10 and first.float32_schedule and first.posterior_log_variance == "unclipped"
    for name in ("betas", "alphas_cumprod", "posterior_variance", "posterior_log_variance", "posterior_mean_coef1", "log_betas"):
        assert torch.equal(first._tables[name], respaced._tables[name][:10]), name
    rebuilt = GaussianDiffusion(alphas_cumprod=respaced.alphas_cumprod[:10], objective=respaced.objective,
                                learned_variance=respaced.learned_variance, timestep_map=respaced.timestep_map[:10])
    lost = (rebuilt._tables["posterior_log_variance"] - first._tables["posterior_log_variance"]).abs()
    assert lost[0] > 1.0 and lost[1:].max() < 1e-5  # t = 0 (ddpm's last step on a learned range); float32 rounding elsewhere


def test_float32_pictures_edit_and_upscale_with_a_bfloat16_model():
    # a library caller hands pictures as they come (float32); the cascade casts them to each stage's precision
    from dalle2_core.hub import bundled_path

    pipe = load_pipeline(bundled_path("shapes"), dtype=torch.bfloat16)
    s = pipe.resolve(steps=(2, 2), prior_steps=2, inpainting=True)
    pic, mask = picture(size=64), torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[:, :32] = True
    for edit in (ImageEdit(pic, strength=0.5), ImageEdit(pic, mask=mask)):
        out = pipe.generate(["a red circle"], s, generator=gens(n=1), edit=edit)
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    up = pipe.upscale(picture(size=32), s, generator=gens(n=1))
    assert up.dtype == torch.bfloat16 and up.shape == (1, 3, 64, 64) and torch.isfinite(up).all()
