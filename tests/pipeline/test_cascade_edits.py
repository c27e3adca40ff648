"""The cascade's picture modes on toy networks: an inpainting network beside RePaint, SDEdit's step count per stage, and
(height, width) stage sizes. The Kandinsky 2.2 parity of the same paths is tests/pipeline/test_kandinsky_pipeline.py."""

import pytest
import torch

from dalle2_core.cascade import Picture, Stage, StageSettings, sample_cascade
from dalle2_core.diffusion import GaussianDiffusion, blended_sample, redrawn_steps, truncated_diffusion
from dalle2_core.errors import SettingError

DIFFUSION = GaussianDiffusion.from_schedule("linear", 100)


def toy(x, t, **kwargs):
    """An eps model with some dependence on x and t (never exactly 0)."""
    return 0.1 * x + 0.01 * t.float()[:, None, None, None]


class Inpainter:
    """An inpainting network: records what it was called with, predicts eps from x alone."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, *, masked, mask, **kwargs):
        self.calls.append((masked.clone(), mask.clone(), sorted(kwargs)))
        return toy(x, t)


def stage(**options) -> Stage:
    base = dict(name="toy", network=toy, diffusion=DIFFUSION, size=(8, 12), channels=3, guided=False, default_steps=5)
    return Stage(**{**base, **options})


def test_redrawn_steps_round_or_floor_as_diffusers_img2img():
    assert [redrawn_steps(50, s) for s in (0.35, 0.3, 0.01)] == [18, 15, 0]
    assert [redrawn_steps(50, s, "floor") for s in (0.35, 0.3, 0.01, 1.0)] == [17, 15, 0, 50]
    assert redrawn_steps(100, 0.29, "floor") == 28  # 0.29 · 100 is 28.999999999999996 in floats: int() as diffusers
    assert truncated_diffusion(DIFFUSION.respace(50), 0.35, "floor").num_timesteps == 17
    with pytest.raises(ValueError, match="unknown rounding 'ceil'; accepted: round, floor"):
        redrawn_steps(10, 0.5, "ceil")


def test_a_stage_of_height_by_width_samples_noise_of_that_shape():
    seen = []
    out = sample_cascade([stage()], [StageSettings()], batch_size=2, generator=torch.Generator().manual_seed(0),
                         on_step=lambda p, i, total, x: seen.append(tuple(x.shape)))
    assert out.shape == (2, 3, 8, 12) and set(seen) == {(2, 3, 8, 12)}


def test_sdedit_step_count_follows_the_stages_rounding():
    init = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(1))  # any size: resized to 8 x 12
    totals = {}
    for rounding in ("round", "floor"):
        seen = []
        sample_cascade([stage(strength_rounding=rounding, default_steps=50)], [StageSettings()], batch_size=1,
                       picture=Picture.of(init, 0.35), on_step=lambda p, i, total, x, seen=seen: seen.append(total),
                       generator=torch.Generator().manual_seed(0))
        totals[rounding] = seen[0]
    assert totals == {"round": 18, "floor": 17}
    # 0.01 of 50 steps: round and floor both re-draw nothing, so the picture comes back (at the stage's size)
    kept = sample_cascade([stage(strength_rounding="floor", default_steps=50)], [StageSettings()], batch_size=1,
                          picture=Picture.of(init, 0.01))
    assert kept.shape == (1, 3, 8, 12)


@torch.no_grad()
def test_blended_sample_puts_the_kept_region_back_at_each_level_with_the_initial_noise():
    g = torch.Generator().manual_seed(2)
    noise, known = torch.randn(1, 3, 4, 6, generator=g), torch.randn(1, 3, 4, 6, generator=g)
    keep = torch.zeros(1, 1, 4, 6, dtype=torch.bool)
    keep[..., :, :3] = True
    spaced = DIFFUSION.respace(5)
    seen = []

    def on_step(i, total, x):
        seen.append(x.clone())

    for sampler in ("ddpm", "ddim", "dpmpp", "dpmpp_sde"):
        seen.clear()
        out = blended_sample(toy, DIFFUSION, noise, known, keep, steps=5, sampler=sampler, generator=torch.Generator().manual_seed(3),
                             on_step=on_step)
        assert torch.equal(torch.where(keep, out, known), known)  # exactly the picture where kept
        for i, x in enumerate(seen[:-1]):  # after step i, x sits at index 3 - i: the kept region is known noised there
            level = spaced.q_sample(known, spaced.timesteps(3 - i, x), noise=noise)
            assert torch.equal(torch.where(keep, x, level), level), (sampler, i)
        assert (out[..., 3:] - known[..., 3:]).abs().max() > 1e-3  # the rest is sampled


@torch.no_grad()
def test_an_inpainting_network_sees_the_masked_picture_and_the_prepared_mask_and_runs_any_sampler():
    net = Inpainter()
    grown = []

    def inpaint_mask(keep):  # a family's preparation (Kandinsky grows the re-drawn region): here, drop one column more
        out = keep.clone()
        out[..., 5] = False
        grown.append(out)
        return out

    picture = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(4))
    redraw = torch.zeros(1, 8, 12, dtype=torch.bool)
    redraw[:, 2:6, 6:] = True
    st = stage(network=net, inpaint_mask=inpaint_mask, guided=True, cond={"c": torch.ones(1, 2)}, uncond={"c": torch.zeros(1, 2)})
    out = sample_cascade([st], [StageSettings(cond_scale=3.0, sampler="dpmpp")], batch_size=1, picture=Picture.of(
        None, 1.0, picture, ~redraw), generator=torch.Generator().manual_seed(0))
    keep = grown[0]
    assert keep.shape == (1, 1, 8, 12) and not keep[..., 5].any()
    masked, mask, keywords = net.calls[0]
    assert keywords == ["c"] and mask.shape == (2, 1, 8, 12)  # both guidance branches
    assert torch.equal(mask[:1], keep.float()) and torch.equal(mask[1:], keep.float())
    assert torch.equal(masked[:1], torch.where(keep, picture * 2 - 1, torch.zeros(())))
    assert len(net.calls) == 5
    assert torch.equal(torch.where(redraw[:, None], picture, out), picture)  # kept pixels exactly the picture's


def test_repaint_stages_refuse_samplers_it_cannot_run_before_any_stage_runs():
    picture = torch.rand(1, 3, 8, 12)
    keep = torch.ones(1, 8, 12, dtype=torch.bool)
    keep[:, :4] = False
    with pytest.raises(SettingError, match="inpainting supports samplers ddpm, ddim; got 'dpmpp'"):
        sample_cascade([stage()], [StageSettings(sampler="dpmpp")], batch_size=1, picture=Picture.of(None, 1.0, picture, keep))
    out = sample_cascade([stage()], [StageSettings(sampler="ddim")], batch_size=1, picture=Picture.of(None, 1.0, picture, keep),
                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.where(keep[:, None], out, picture), picture)
