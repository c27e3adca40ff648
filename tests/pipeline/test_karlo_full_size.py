"""Full-size Karlo v1-alpha: what our modules build from the (reconstructed) Hub configs equals diffusers' modules.

tests/fixtures/karlo/full_size.json holds diffusers' key -> shape lists of every component, built on
the meta device from tests/fixtures/karlo/configs/ (see the README there); our modules are built on
meta too, so nothing is allocated.
"""

import json
import math

import pytest
import torch
from fixtures.karlo.loader import FIXTURES

from dalle2_core.adm import AdmUnet, TextProj
from dalle2_core.convert import diffusers_config as dc, diffusers_keys as dk
from dalle2_core.families.karlo import config as kc
from dalle2_core.families.karlo.cascade import KarloCascade
from dalle2_core.families.karlo.defaults import karlo_prior_diffusion
from dalle2_core.prior import StandardizedPrior

CONFIGS = FIXTURES / "configs"
FULL = json.loads((FIXTURES / "full_size.json").read_text())
# parameter counts (diffusers' state dicts, i.e. with the prior's clip_mean / clip_std)
COUNTS = {"prior": 1_022_030_080, "text_proj": 7_878_400, "decoder": 885_439_686, "super_res_first": 691_579_523,
          "super_res_last": 691_579_523}


def config(component: str) -> dict:
    name = "scheduler_config.json" if component.endswith("scheduler") else "config.json"
    return json.loads((CONFIGS / component / name).read_text())


def meta_state(component: str) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in FULL[component].items()}


def test_parameter_counts_are_karlos():
    for component, count in COUNTS.items():
        assert sum(math.prod(shape) for shape in FULL[component].values()) == count
    # karlo.md: prior ≈ 1.02 B, text_proj ≈ 7.9 M, decoder ≈ 885 M, each super-res ≈ 692 M
    assert round(COUNTS["prior"] / 1e9, 2) == 1.02 and round(COUNTS["text_proj"] / 1e6, 1) == 7.9
    assert round(COUNTS["decoder"] / 1e6) == 885 and round(COUNTS["super_res_first"] / 1e6) == 692


def test_full_size_prior_keys_and_shapes_equal_diffusers():
    with torch.device("meta"):
        prior = StandardizedPrior(config=kc.karlo_prior_config(config("prior"), config("prior_scheduler")))
    mapped = dk.prior_state(meta_state("prior"), prior.state_dict())  # raises on any missing, extra or reshaped key
    assert len(mapped) == len(FULL["prior"]) == len(prior.state_dict()) == 338
    assert sum(p.numel() for p in prior.parameters()) + 2 * 768 == COUNTS["prior"]
    assert prior.net.config.width == 2048 and prior.net.config.seq_len == 81


def test_full_size_text_proj_keys_and_shapes_equal_diffusers():
    with torch.device("meta"):
        text_proj = TextProj(dc.text_proj_config(config("text_proj")))
    dk.text_proj_state(meta_state("text_proj"), text_proj.state_dict())
    assert sum(p.numel() for p in text_proj.parameters()) == COUNTS["text_proj"]


@pytest.mark.parametrize("component", ["decoder", "super_res_first", "super_res_last"])
def test_full_size_unet_keys_and_shapes_equal_diffusers(component):
    build = dc.unet2d_condition_config if component == "decoder" else dc.unet2d_config
    with torch.device("meta"):
        unet = AdmUnet(build(config(component)))
    mapped = dk.unet_state(meta_state(component), unet.state_dict())
    assert len(mapped) == len(FULL[component])
    assert sum(p.numel() for p in unet.parameters()) == COUNTS[component]


def test_full_size_cascade_is_the_default_karlo_cascade():
    names = ("text_proj", "decoder", "super_res_first", "super_res_last")
    converted = kc.karlo_cascade_config(*(config(n) for n in names), config("decoder_scheduler"), config("super_res_scheduler"))
    with torch.device("meta"):
        cascade = KarloCascade(config=converted)
        assert KarloCascade.from_config(converted.to_dict()).config == converted
        # the module defaults are Karlo v1-alpha's
        assert KarloCascade().config == converted
        # the shared layer's default network is Karlo's widths; the family's converter gives the diffusion its numerics
        prior = kc.karlo_prior_config(config("prior"), config("prior_scheduler"))
        assert StandardizedPrior().config.net == prior.net and prior.diffusion == karlo_prior_diffusion()
    dk.cascade_state({n: meta_state(n) for n in names}, cascade.state_dict())
    assert cascade.image_size == 256 and cascade.config.decoder.sample_size == 64
    d = converted.decoder_diffusion
    assert (d.learned_variance, d.x0_clamp, d.sample_steps, d.objective) == (True, 1.0, 25, "eps")
    s = converted.super_res_diffusion
    assert (s.learned_variance, s.x0_clamp, s.sample_steps) == (False, 1.0, 7)
