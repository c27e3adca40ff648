"""Loads the tiny diffusers-layout Karlo of tests/fixtures/karlo into this project's modules (tests only).

The real converter reads Hub folders; these tests read the fixture folder directly with
safetensors and build each module from its diffusers config through `convert.diffusers_config`,
mapping the weights through `convert.diffusers_keys`.
"""

import json
from functools import cache
from pathlib import Path

import torch
from safetensors.torch import load_file

from dalle2_core.adm import AdmUnet, KarloCascade, TextProj
from dalle2_core.convert import diffusers_config as dc, diffusers_keys as dk
from dalle2_core.prior import StandardizedPrior

FIXTURES = Path(__file__).parent / "fixtures" / "karlo"
TINY = FIXTURES / "tiny"
WEIGHTS = "diffusion_pytorch_model.safetensors"


def config(component: str) -> dict:
    name = "scheduler_config.json" if component.endswith("scheduler") else "config.json"
    return json.loads((TINY / component / name).read_text())


def weights(component: str) -> dict[str, torch.Tensor]:
    return load_file(str(TINY / component / WEIGHTS))


@cache
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "reference.safetensors"))


def loaded(module: torch.nn.Module, mapped: dict) -> torch.nn.Module:
    module.load_state_dict(mapped, strict=True)
    return module.eval()


def prior() -> StandardizedPrior:
    module = StandardizedPrior(config=dc.standardized_prior_config(config("prior"), config("prior_scheduler")))
    return loaded(module, dk.prior_state(weights("prior"), module.state_dict()))


def text_proj() -> TextProj:
    module = TextProj(dc.text_proj_config(config("text_proj")))
    return loaded(module, dk.text_proj_state(weights("text_proj"), module.state_dict()))


def unet(component: str) -> AdmUnet:
    build = dc.unet2d_condition_config if component == "decoder" else dc.unet2d_config
    module = AdmUnet(build(config(component)))
    return loaded(module, dk.unet_state(weights(component), module.state_dict()))


def cascade() -> KarloCascade:
    names = ("text_proj", "decoder", "super_res_first", "super_res_last")
    module = KarloCascade(config=dc.karlo_cascade_config(*(config(n) for n in names), config("decoder_scheduler"), config("super_res_scheduler")))
    return loaded(module, dk.cascade_state({n: weights(n) for n in names}, module.state_dict()))
