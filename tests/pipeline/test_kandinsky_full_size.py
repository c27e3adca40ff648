"""Full-size Kandinsky 2.2: the converter's modules, built on meta from the (reconstructed) Hub configs, take exactly
diffusers' and transformers' state dicts.

tests/fixtures/kandinsky/full_size.json holds their key -> shape lists of every component, built on the meta device by
diffusers / transformers from tests/fixtures/kandinsky/configs/ (see the README there). Nothing is allocated here.
"""

import dataclasses
import json
import math

import open_clip
import pytest
import torch
from fixtures.kandinsky.loader import CONFIGS, FIXTURES
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from dalle2_core.adm import AdmUnet
from dalle2_core.clip.hf_clip_adapter import HFClipAdapter, HFClipConfig
from dalle2_core.convert import diffusers_keys as dk
from dalle2_core.convert.hf_clip_keys import open_clip_text_cfg, open_clip_vision_cfg, text_key_map, vision_key_map
from dalle2_core.convert.materialize import Rule, TensorDict, build_on_meta, check_key_map
from dalle2_core.families.kandinsky import config as kc, keys
from dalle2_core.families.kandinsky.convert import CLIP_ARCHITECTURE
from dalle2_core.families.kandinsky.decoder import KandinskyDecoder, KandinskyDecoderConfig
from dalle2_core.movq import MoVQ
from dalle2_core.prior import StandardizedPrior

FULL = json.loads((FIXTURES / "full_size.json").read_text())
# tensor elements per component; × 4 bytes (× 2 for the float16 image encoder) are the Hub's file sizes in kandinsky.md:
# prior 4.1 GB, text_encoder 2.78 GB, image_encoder 3.69 GB, unet 5.01 GB (inpaint the same), movq 271 MB
COUNTS = {"prior": 1_026_225_920, "text_encoder": 694_659_840, "image_encoder": 1_844_907_264, "unet": 1_253_057_288,
          "inpaint_unet": 1_253_074_568, "movq": 67_832_495}


def config(path: str) -> dict:
    return json.loads((CONFIGS / path).read_text())


def source(component: str) -> TensorDict:
    return TensorDict({k: torch.empty(shape, device="meta") for k, shape in FULL[component].items()}, what=component)


def check(component: str, module: torch.nn.Module, key_map) -> None:
    """Every diffusers / transformers tensor fills one entry of `module` with the same shape, and every entry is filled."""
    state = module.state_dict()
    check_key_map(source(component), key_map, state, component)
    assert sum(t.numel() for t in state.values()) == COUNTS[component]


def renamed(component: str, rename, flatten=()) -> list[Rule]:
    return [Rule(rename(k, component), (k,), (lambda t: t.reshape(-1)) if k in flatten else None) for k in FULL[component]]


def test_file_sizes_are_the_hubs():
    counts = {c: sum(math.prod(s) for s in shapes.values()) for c, shapes in FULL.items()}
    assert counts == COUNTS
    assert round(counts["unet"] * 4 / 1e9, 2) == 5.01 and round(counts["image_encoder"] * 2 / 1e9, 2) == 3.69
    assert round(counts["text_encoder"] * 4 / 1e9, 2) == 2.78 and round(counts["movq"] * 4 / 1e6) == 271
    # what text-to-image loads: text tower, prior, U-Net, MoVQ ≈ 3 B parameters, ≈ 12 GB in float32
    assert round(sum(counts[c] for c in ("text_encoder", "prior", "unet", "movq")) / 1e9, 2) == 3.04


def test_full_size_prior():
    with torch.device("meta"):
        prior = StandardizedPrior(config=kc.prior_config(config("prior/prior/config.json"), config("prior/scheduler/scheduler_config.json")))
    check("prior", prior, renamed("prior", dk.prior_key, dk.PRIOR_FLATTENED))
    net = prior.config.net
    assert (net.embed_dim, net.width, net.depth, net.seq_len) == (1280, 2048, 20, 81)
    assert (prior.config.diffusion.x0_clamp, prior.config.diffusion.sample_steps) == (10.0, 25)


@pytest.mark.parametrize("component,path", [("unet", "decoder/unet/config.json"), ("inpaint_unet", "decoder_inpaint/unet/config.json")])
def test_full_size_unets(component, path):
    unet_config = kc.unet_config(config(path))
    unet = build_on_meta(lambda: AdmUnet(unet_config))
    check(component, unet, renamed(component, keys.unet_key))
    assert unet_config.in_channels == (9 if component == "inpaint_unet" else 4) and unet_config.time_embed_dim == 1536


def test_full_size_movq():
    movq = build_on_meta(lambda: MoVQ(kc.movq_config(config("decoder/movq/config.json"))))
    check("movq", movq, renamed("movq", keys.movq_key))
    assert movq.downsample_factor == 8


def test_full_size_decoder_is_the_default_kandinsky_decoder():
    converted = kc.decoder_config(config("decoder/unet/config.json"), config("decoder/movq/config.json"),
                                  config("decoder/scheduler/scheduler_config.json"))
    assert converted == KandinskyDecoderConfig()
    assert KandinskyDecoderConfig.from_dict(json.loads(json.dumps(converted.to_dict()))) == converted
    assert converted.downsample_factor == 64 and converted.diffusion.sample_steps == 100
    decoder = build_on_meta(KandinskyDecoder)
    assert decoder.latent_shape(512, 768) == (4, 64, 96) and converted.default_size == 512
    assert converted.sizes() == "multiples of 64 from 256 to 1024 per side"
    for height, width in ((512, 500), (192, 512), (512, 1088)):
        with pytest.raises(ValueError, match=f"picture size {width}x{height} is not supported; accepted: multiples of 64 from 256 to 1024"):
            decoder.latent_shape(height, width)


@pytest.mark.parametrize("tower", ["text", "vision"])
def test_full_size_clip_towers_are_open_clip_vit_big_g(tower):
    path = f"prior/{'text' if tower == 'text' else 'image'}_encoder/config.json"
    component = "text_encoder" if tower == "text" else "image_encoder"
    read, cfg_class = (open_clip_text_cfg, CLIPTextCfg) if tower == "text" else (open_clip_vision_cfg, CLIPVisionCfg)
    embed_dim, quick_gelu, tower_cfg = read(config(path))
    ours, theirs = cfg_class(**tower_cfg), cfg_class(**open_clip.get_model_config(CLIP_ARCHITECTURE)[f"{tower}_cfg"])
    # the transformers config describes open_clip's ViT-bigG-14 (gelu, not QuickGELU); open_clip writes the vision MLP
    # ratio rounded (4.9231), which gives the same 8192-wide MLP as transformers' exact 8192 / 1664
    assert (embed_dim, quick_gelu) == (open_clip.get_model_config(CLIP_ARCHITECTURE)["embed_dim"], False)
    assert int(ours.width * ours.mlp_ratio) == int(theirs.width * theirs.mlp_ratio)
    assert dataclasses.replace(ours, mlp_ratio=theirs.mlp_ratio) == theirs
    options = dict(name=CLIP_ARCHITECTURE, quick_gelu=False, text=tower == "text", vision=tower == "vision", normalize=False)
    adapter = build_on_meta(lambda: HFClipAdapter(HFClipConfig(**options)))
    rules = text_key_map(tower_cfg["layers"], "text.") if tower == "text" else vision_key_map(tower_cfg["layers"], "visual.")
    check(component, adapter, rules)
