"""KandinskyPipeline against diffusers 0.42.1's KandinskyV22PriorPipeline, KandinskyV22Pipeline, KandinskyV22Img2ImgPipeline
and KandinskyV22InpaintPipeline, run on diffusers' recorded initial latents and step noise (`diffusion.RecordedNoise`).

The model is the converter's folder of the diffusers-written tiny Kandinsky (tests/fixtures/kandinsky), loaded by
`load_pipeline` as `dream --model` loads it. Tolerances: 1e-5 on embeddings (float32 rounding of the same operations in
another order), 1e-4 on pictures after 50-100 chained steps and the MoVQ decoder.
"""

import pytest
import torch
from fixtures.kandinsky import loader as kf

from dalle2_core.conditioning import Condition
from dalle2_core.diffusion import RecordedNoise
from dalle2_core.families.kandinsky.decoder import grow_repainted
from dalle2_core.families.kandinsky.pipeline import KandinskyPipeline
from dalle2_core.pipeline import ImageEdit, SettingError, load_pipeline

R = kf.reference()
PROMPTS = ["a red cat, 4k photo", "sunset over the sea"]
NEGATIVE = ["blurry", "low quality, watermark"]
HEIGHT, WIDTH = 16, 24


def noises(run: str) -> list[torch.Tensor]:
    return [R[k] for k in sorted(k for k in R if k.startswith(f"{run}.noise."))]


def prior_noise(run: str) -> list[torch.Tensor]:
    """UnCLIPScheduler draws no noise at its last step (t = 0); our DDPM step draws one there and multiplies it by 0."""
    draws = noises(run)
    assert len(draws) == 25
    return [*draws, torch.zeros_like(draws[0])]


def close(ours, theirs, tolerance):
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    assert (ours.float() - theirs.float()).abs().max() < tolerance


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> KandinskyPipeline:
    out = tmp_path_factory.mktemp("kandinsky") / "model"
    kf.convert.convert_kandinsky(kf.PRIOR, kf.DECODER, out, inpaint_dir=kf.INPAINT)
    pipe = load_pipeline(out)
    assert isinstance(pipe, KandinskyPipeline) and "image_encoder" not in pipe._modules and "decoder_inpaint" not in pipe._modules
    return pipe


def test_defaults_are_diffusers_call_defaults_and_the_configs_size(pipeline):
    s = pipeline.resolve()
    assert (s.prior_steps, s.prior_cond_scale, s.steps, s.cond_scale, s.sampler, s.spacing) == (25, 4.0, (100,), (4.0,), "ddpm", None)
    assert s.size == (16, 16) == pipeline.default_size  # the U-Net's sample size (8) times MoVQ's factor (2); 512 at full size
    assert pipeline.sizes() == "multiples of 8 from 8 to 32 per side"
    assert pipeline.resolve(size=(24, 16)).size == (24, 16)
    for bad in ((20, 16), (40, 16), (16, 0)):
        with pytest.raises(SettingError, match=rf"^{bad[0]}x{bad[1]} is not a size this model makes; accepted: multiples of 8 from 8 "
                                               "to 32 per side$") as err:
            pipeline.resolve(size=bad)
        assert err.value.setting == "size"


@torch.no_grad()
def test_prior_matches_kandinsky_v22_prior_pipeline(pipeline):
    s = pipeline.resolve()
    text = pipeline.encode_text(PROMPTS)
    noise = RecordedNoise(prior_noise("prior_run"))
    embeds, negative = pipeline.sample_prior_with_negatives(text, None, s, generator=noise)
    assert noise.remaining == 0 and negative is None
    assert R["prior_run.image_embeds"].abs().max() > 0.1
    close(embeds, R["prior_run.image_embeds"], 1e-5)
    # without a negative prompt the decoder's unconditional embedding is the stored zero-image embedding
    close(pipeline.decoder.null_image_embeds(2), R["prior_run.negative_image_embeds"], 1e-5)


@torch.no_grad()
def test_negative_prompts_are_extra_prior_rows_guided_by_themselves(pipeline):
    s = pipeline.resolve()
    text, neg = pipeline.encode_text(PROMPTS), pipeline.encode_text(NEGATIVE)
    noise = RecordedNoise(prior_noise("prior_negative_run"))  # one draw of (4, d) per step: prompts' rows, then negatives'
    embeds, negative = pipeline.sample_prior_with_negatives(text, neg, s, generator=noise)
    assert noise.remaining == 0
    close(embeds, R["prior_negative_run.image_embeds"], 1e-5)
    close(negative.image_embed, R["prior_negative_run.negative_image_embeds"], 1e-5)
    assert negative.text.text == NEGATIVE
    # the negative rows are unguided samples: what negative_condition (variations) gives on the same noise rows
    rows = RecordedNoise([d[2:] for d in prior_noise("prior_negative_run")])
    close(pipeline.negative_condition(neg, s, generator=rows).image_embed, negative.image_embed, 1e-5)


@torch.no_grad()
def test_per_image_generators_give_an_image_the_same_draws_alone_or_in_a_batch(pipeline):
    s = pipeline.resolve(prior_steps=3)
    text, neg = pipeline.encode_text(PROMPTS), pipeline.encode_text(NEGATIVE)
    both, negative = pipeline.sample_prior_with_negatives(text, neg, s, generator=[torch.Generator().manual_seed(i) for i in (5, 6)])
    alone, negative_alone = pipeline.sample_prior_with_negatives(text.rows(1, 2), neg.rows(1, 2), s,
                                                                 generator=[torch.Generator().manual_seed(6)])
    close(both[1:], alone, 1e-5)
    close(negative.image_embed[1:], negative_alone.image_embed, 1e-5)


@torch.no_grad()
def test_text_to_image_matches_kandinsky_v22_pipeline(pipeline):
    """Prompts -> prior -> decoder at 24 x 16 on the recorded noise of both diffusers pipelines, in the order they drew it."""
    s = pipeline.resolve(size=(WIDTH, HEIGHT))
    draws = noises("decoder_run")
    assert len(draws) == 101 and draws[0].shape == (2, 4, HEIGHT // 2, WIDTH // 2)  # the initial latents, then one per step
    noise = RecordedNoise([*prior_noise("prior_run"), *draws])
    images = pipeline.generate(PROMPTS, s, generator=noise)
    assert noise.remaining == 0
    assert R["decoder_run.images"].std() > 0.1
    close(images, R["decoder_run.images"], 1e-4)


@torch.no_grad()
def test_decode_on_given_embeddings_and_a_negative_embedding(pipeline):
    s = pipeline.resolve(size=(WIDTH, HEIGHT))
    embeds = R["prior_run.image_embeds"]
    negative = Condition(R["prior_run.negative_image_embeds"], None)  # given explicitly: the same numbers as the stored constant
    images = pipeline.decode(embeds, None, s, generator=RecordedNoise(noises("decoder_run")), negative=negative)
    close(images, R["decoder_run.images"], 1e-4)


@torch.no_grad()
def test_img2img_matches_kandinsky_v22_img2img_pipeline(pipeline):
    """strength 0.3 of 100 leading steps: the last int(0.3 · 100) = 30 re-drawn, from MoVQ's latents noised at the 30th."""
    s = pipeline.resolve()
    draws = noises("img2img_run")
    assert len(draws) == 31  # the noise added to the picture's latents, then one per step
    picture = R["img2img_run.picture"]
    close(picture * 2 - 1, R["img2img_run.movq_input"], 1e-6)  # the picture diffusers encoded: ours, in [-1, 1]
    edit = ImageEdit(picture, strength=0.3)
    noise = RecordedNoise(draws)
    images = pipeline.decode(R["prior_run.image_embeds"], None, s, generator=noise, edit=edit)
    assert noise.remaining == 0
    assert (R["img2img_run.images"] - picture).abs().max() > 0.05  # something was re-drawn
    close(images, R["img2img_run.images"], 1e-4)


def test_img2img_counts_re_drawn_steps_as_diffusers_does(pipeline):
    """int(strength · steps), not round: 0.35 of 50 steps re-draws 17 (round would give 18); 0.29 of 100 re-draws 28."""
    counted = []
    for strength, steps in ((0.35, 50), (0.29, 100)):
        s = pipeline.resolve(steps=steps, prior_steps=2)
        seen = []
        pipeline.decode(R["prior_run.image_embeds"][:1], None, s, edit=ImageEdit(R["img2img_run.picture"][:1], strength=strength),
                        generator=torch.Generator().manual_seed(0), on_step=lambda stage, i, total, x, seen=seen: seen.append(total))
        counted.append(seen[0])
    assert counted == [17, 28]


@torch.no_grad()
def test_inpainting_matches_kandinsky_v22_inpaint_pipeline(pipeline):
    """The 9-channel U-Net on [latents ‖ masked picture latents ‖ keep mask], the kept latents put back after every step at
    the next step's level with the initial noise, 50 steps; white = repaint, as diffusers since 0.19."""
    s = pipeline.resolve(size=(WIDTH, HEIGHT), steps=50, inpainting=True)
    picture, white = (R["inpaint_run.image"] + 1) / 2, R["inpaint_run.mask"][:, 0] > 0.5  # (1, H, W) True = repaint
    draws = noises("inpaint_run")
    assert len(draws) == 51
    last = {}

    def on_step(stage, i, total, x):
        if i == total - 1:
            last["latents"] = x.clone()

    noise = RecordedNoise(draws)
    images = pipeline.decode(R["prior_run.image_embeds"][:1], None, s, generator=noise, edit=ImageEdit(picture, mask=white),
                             on_step=on_step)
    assert noise.remaining == 0 and "decoder_inpaint" in pipeline._modules  # loaded on first use
    theirs = R["inpaint_run.images"]
    # the whole picture diffusers decodes from the final latents; ours then keeps the kept pixels exactly
    close(pipeline.decoder.decode(last["latents"]), theirs, 1e-4)
    close(torch.where(white[:, None], images, theirs), theirs, 1e-4)
    assert torch.equal(torch.where(white[:, None], picture, images), picture)
    assert (theirs - picture).abs().amax(dim=1)[white].max() > 0.05  # the masked region was re-drawn


def test_the_inpainting_mask_grows_as_diffusers_prepares_it():
    white = R["inpaint_run.mask"] > 0.5  # (1, 1, H, W)
    keep = torch.nn.functional.interpolate((~white).float(), size=(HEIGHT // 2, WIDTH // 2), mode="nearest") > 0.5
    grown = grow_repainted(keep)
    assert torch.equal(grown.float(), R["inpaint_run.latent_mask"])
    assert (grown != keep).any()  # one latent pixel more is re-drawn


def test_the_growth_is_diffusers_asymmetric_one():
    keep = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    keep[..., 2, 2] = False
    redrawn = ~grow_repainted(keep)[0, 0]
    assert redrawn.nonzero().tolist() == [[1, 1], [1, 2], [2, 1], [2, 2], [2, 3], [3, 2], [3, 3]]  # not (1, 3), not (3, 1)


@torch.no_grad()
def test_inpainting_network_runs_with_every_sampler_and_repaint_without_it(pipeline, tmp_path):
    s_dpm = pipeline.resolve(steps=4, prior_steps=2, sampler="dpmpp", inpainting=True)
    assert s_dpm.sampler == "dpmpp"  # the inpainting U-Net needs no RePaint: any sampler
    picture = R["img2img_run.picture"][:1]
    white = torch.zeros(1, 16, 16, dtype=torch.bool)
    white[:, 4:12, 2:9] = True
    edit = ImageEdit(picture, mask=white)
    images = pipeline.decode(R["prior_run.image_embeds"][:1], None, s_dpm, edit=edit, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.where(white[:, None], picture, images), picture) and images.isfinite().all()

    plain = load_pipeline(pipeline.folder)
    folder = tmp_path / "no-inpaint"  # a model folder converted without the inpainting pipeline: RePaint on the decoder
    kf.convert.convert_kandinsky(kf.PRIOR, kf.DECODER, folder)
    plain = load_pipeline(folder)
    assert plain.repaints and not pipeline.repaints
    with pytest.raises(ValueError, match="inpainting supports samplers ddpm, ddim; got 'dpmpp'"):
        plain.resolve(sampler="dpmpp", inpainting=True)
    s = plain.resolve(steps=4, prior_steps=2, inpainting=True)
    out = plain.decode(R["prior_run.image_embeds"][:1], None, s, edit=edit, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.where(white[:, None], picture, out), picture)
    assert (out - images).abs().max() > 1e-3  # another network, another result


@torch.no_grad()
def test_variations_mix_and_interpolate_embed_pictures_with_the_vision_tower_on_first_use(pipeline):
    plain = load_pipeline(pipeline.folder)
    s = plain.resolve(steps=2, prior_steps=2)
    picture = torch.rand(1, 3, 40, 30, generator=torch.Generator().manual_seed(3))
    assert "image_encoder" not in plain._modules
    out = plain.variations(picture, s, num_variations=2, generator=[torch.Generator().manual_seed(i) for i in (0, 1)])
    assert out.shape == (2, 3, 16, 16) and "image_encoder" in plain._modules
    tower = plain.image_encoder
    expected = tower.embed_image(picture).image_embed
    close(plain.embed_images(picture), expected, 1e-6)  # the raw projection (no l2 normalisation): unit_embeddings is False
    assert not plain.unit_embeddings and abs(float(expected.norm()) - 1.0) > 1e-3
    mixed = plain.mix([("a red cat", 0.5), (picture, 0.5)], s, num_images=1, generator=torch.Generator().manual_seed(0))
    frames = plain.interpolate(["a red cat", picture], 3, s)
    assert mixed.shape == (1, 3, 16, 16) and frames.shape == (3, 3, 16, 16)


def test_upscale_is_refused_in_one_line(pipeline):
    with pytest.raises(ValueError, match="the kandinsky family has no separate super-resolution stages to run"):
        pipeline.upscale(torch.rand(1, 3, 16, 16), pipeline.resolve())


@torch.no_grad()
def test_bfloat16_samples(pipeline):
    half = load_pipeline(pipeline.folder, dtype=torch.bfloat16)
    images = half.generate(["a red cat"], half.resolve(steps=3, prior_steps=2), generator=torch.Generator().manual_seed(0))
    assert images.dtype == torch.bfloat16 and images.shape == (1, 3, 16, 16) and images.float().isfinite().all()
