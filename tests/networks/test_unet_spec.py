"""Decoder Unet against its references: DALLE2-pytorch 1.1.0 numerics, the DALLE2-pytorch README, the LAION configs."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dalle2_core import Unet

FIXTURE = Path(__file__).parents[1] / "fixtures" / "unet_parity_1_1_0.safetensors"


def test_matches_dalle2_pytorch_1_1_0_numerics():
    # weights, inputs and outputs of a 1.1.0 Unet (text cond, linear + self attention, memory efficient,
    # low-res cond, learned variance); see fixtures/make_unet_parity_fixture.py
    with safe_open(str(FIXTURE), "pt") as f:
        config = json.loads(f.metadata()["config"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    unet = Unet(**config).eval()
    weights = {k.removeprefix("weight."): v.float() for k, v in tensors.items() if k.startswith("weight.")}
    unused = set(weights) - set(unet.state_dict())
    assert unused == set()
    unet.load_state_dict(weights, strict=True)
    inp = {k.removeprefix("input."): v for k, v in tensors.items() if k.startswith("input.")}
    x, t = inp.pop("x"), inp.pop("t")
    with torch.no_grad():
        out = unet(x, t, **inp)
        null = unet(x, t, **inp, cond_drop_mask=torch.ones(2, dtype=torch.bool))
    assert out.shape == (2, 6, 16, 16)
    torch.testing.assert_close(out, tensors["output.cond"], rtol=0, atol=2e-5)
    torch.testing.assert_close(null, tensors["output.null"], rtol=0, atol=2e-5)
    assert (out - null).abs().max().item() > 1e-2  # the fixture does exercise the conditioning


SEED_README_UNETS = [  # every Unet(...) of the DALLE2-pytorch README
    dict(dim=128, image_embed_dim=512, cond_dim=128, channels=3, dim_mults=(1, 2, 4, 8)),
    dict(dim=32, image_embed_dim=512, cond_dim=128, channels=3, dim_mults=(1, 2, 4, 8)),
    dict(dim=32, image_embed_dim=512, cond_dim=128, channels=3, dim_mults=(1, 2, 4, 8, 16)),
    dict(dim=16, image_embed_dim=512, cond_dim=128, channels=3, dim_mults=(1, 2, 4, 8, 16)),
    dict(dim=32, image_embed_dim=512, cond_dim=128, channels=3, sparse_attn=True, sparse_attn_window=2,
         dim_mults=(1, 2, 4, 8)),
    dict(dim=32, image_embed_dim=512, channels=3, dim_mults=(1, 2, 4, 8, 16), cond_on_image_embeds=True,
         cond_on_text_encodings=False),
    dict(dim=32, image_embed_dim=512, channels=3, dim_mults=(1, 2, 4, 8, 16), cond_on_image_embeds=True,
         cond_on_text_encodings=False, attend_at_middle=False),
    dict(dim=128, image_embed_dim=512, text_embed_dim=512, cond_dim=128, channels=3, dim_mults=(1, 2, 4, 8)),
    dict(dim=16, image_embed_dim=512, text_embed_dim=512, cond_dim=128, channels=3, dim_mults=(1, 2, 4, 8, 16),
         cond_on_text_encodings=True),
]


# their parameter counts (1.1.0's layout; the first is also checked when it runs at 64 px below)
SEED_README_PARAMETERS = [189_553_603, 16_265_923, 51_212_099, 16_592_067, 17_871_427, 48_826_883, 48_268_739,
                          189_553_603, 16_690_499]


@pytest.mark.parametrize("kwargs, count", list(zip(SEED_README_UNETS, SEED_README_PARAMETERS)))
def test_seed_readme_unets_construct(kwargs, count):
    with torch.device("meta"):  # structure only: no memory, no init cost
        unet = Unet(**kwargs)
        rebuilt = Unet.from_config(unet.config.to_dict())
    assert unet.channels_out == 3 and unet.config.dim == kwargs["dim"]
    assert rebuilt.config == unet.config
    assert sum(p.numel() for p in unet.parameters()) == sum(p.numel() for p in rebuilt.parameters()) == count


def test_seed_readme_base_unet_runs_at_64px():
    torch.manual_seed(0)
    unet = Unet(**SEED_README_UNETS[0])
    assert sum(p.numel() for p in unet.parameters()) == 189_553_603
    x, embed = torch.randn(1, 3, 64, 64).expand(2, -1, -1, -1), torch.randn(1, 512).expand(2, -1)
    with torch.no_grad():
        unet.to_out.weight.normal_(0, 0.02)
        # the same input twice, the second with the image embedding dropped for its learned null
        out = unet(x, torch.tensor([10, 10]), image_embed=embed, cond_drop_mask=torch.tensor([False, True]))
    assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all()
    assert (out[0] - out[1]).abs().mean() > 1e-3 * out[0].abs().mean()  # the embedding reaches the output


# LAION's public checkpoints (docs/laion.md); the counts equal DALLE2-pytorch 1.1.0's
# for the same configs (its unused null parameters left out)
LAION_DECODER = dict(
    dim=320, cond_dim=512, image_embed_dim=768, text_embed_dim=768, cond_on_text_encodings=True,
    dim_mults=(1, 2, 3, 4), num_resnet_blocks=4, attn_heads=8, attn_dim_head=64, sparse_attn=True,
    memory_efficient=True, self_attn=(False, True, True, True), learned_variance=True,
)
LAION_UPSAMPLER = dict(
    dim=256, cond_dim=512, image_embed_dim=768, text_embed_dim=768, init_cross_embed=False,
    dim_mults=(1, 2, 3, 4), num_resnet_blocks=4, attn_heads=8, attn_dim_head=64, memory_efficient=True,
    cond_on_text_encodings=True, cond_on_image_embeds=False, lowres_cond=True,
)


@pytest.mark.parametrize("kwargs, count", [(LAION_DECODER, 982_610_118), (LAION_UPSAMPLER, 633_003_020)])
def test_laion_configs_have_the_published_structure(kwargs, count):
    with torch.device("meta"):
        unet = Unet(**kwargs)
    assert sum(p.numel() for p in unet.parameters()) == count
    assert unet.downs[1]["resnet_blocks"][0].cross_attn.attn.to_kv.weight.shape == (1024, 512)
