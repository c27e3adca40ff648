"""The ADM U-Net family: time features, resnet resampling, joint attention, the skip topology, TextProj."""

import math

import pytest
import torch

from dalle2_core.adm import AdmUnet, AdmUnetConfig, TextProj
from dalle2_core.adm.attention import JointAttention
from dalle2_core.adm.blocks import AdmResBlock
from dalle2_core.adm.embedding import timestep_features


def tiny(**kw) -> AdmUnet:
    torch.manual_seed(0)
    options = dict(sample_size=8, in_channels=3, out_channels=6, widths=(4, 8), layers_per_block=2, norm_groups=2,
                   levels=(False, True), middle=True, head_dim=4, context_dim=6, added_time_embed=True, time_embed_dim=16)
    return AdmUnet(**{**options, **kw}).eval()


def test_time_features_put_cosines_first_over_half_the_width():
    t = torch.tensor([0, 3, 500])
    f = timestep_features(t, 8)
    freqs = [10000 ** (-i / 4) for i in range(4)]  # exponent over half the width, no shift
    expected = torch.tensor([[math.cos(s * w) for w in freqs] + [math.sin(s * w) for w in freqs] for s in (0, 3, 500)])
    assert f.dtype == torch.float32 and torch.allclose(f, expected, atol=1e-5)
    odd = timestep_features(t, 7)
    assert odd.shape == (3, 7) and torch.equal(odd[:, -1], torch.zeros(3))


def test_resnet_blocks_resample_the_skip_too():
    torch.manual_seed(0)
    x, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 16)
    down = AdmResBlock(4, 8, 16, groups=2, resample="down")
    up = AdmResBlock(8, 8, 16, groups=2, resample="up", scale_shift=False)
    assert down(x, emb).shape == (2, 8, 4, 4) and up(down(x, emb), emb).shape == (2, 8, 8, 8)
    assert down.time_proj.out_features == 16 and up.time_proj.out_features == 8  # scale and shift, or a shift
    assert down.skip is not None and up.skip is None
    # with a zero residual branch the block is its (resampled) skip
    same = AdmResBlock(4, 4, 16, groups=2, resample="up")
    torch.nn.init.zeros_(same.conv2.weight), torch.nn.init.zeros_(same.conv2.bias)
    assert torch.equal(same(x, emb), x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    with pytest.raises(ValueError, match="unknown resample 'pool'"):
        AdmResBlock(4, 4, 16, resample="pool")


def test_joint_attention_masked_context_is_the_same_as_no_such_tokens():
    torch.manual_seed(0)
    attn = JointAttention(8, 6, head_dim=4, groups=2).eval()
    x, context = torch.randn(1, 8, 3, 3), torch.randn(1, 5, 6)
    bias = torch.tensor([[0.0, 0.0, -10000.0, 0.0, -10000.0]])
    kept = context[:, [0, 1, 3]]
    assert (attn(x, context, bias) - attn(x, kept)).abs().max() < 1e-6
    # one softmax over context and pixels: without context tokens it is plain self-attention
    assert not torch.allclose(attn(x, context), attn(x, context[:, :0]))


def test_unet_topology_mirrors_adm():
    unet = tiny()
    assert [len(level.resnets) for level in unet.downs] == [2, 2] and [len(level.resnets) for level in unet.ups] == [3, 3]
    assert unet.downs[0].attentions is None and len(unet.downs[1].attentions) == 2
    assert unet.ups[0].attentions is not None and unet.ups[1].attentions is None  # ups run from the lowest resolution
    assert unet.downs[0].resample.resample == "down" and unet.downs[1].resample is None
    assert unet.ups[0].resample.resample == "up" and unet.ups[1].resample is None
    # skips: stem 4, level 0: 4, 4, down 4; level 1: 8, 8 -> up level 1 (width 8) takes 8, 8, 4; level 0 takes 4, 4, 4
    assert [r.conv1.in_channels for r in unet.ups[0].resnets] == [16, 16, 12]
    assert [r.conv1.in_channels for r in unet.ups[1].resnets] == [12, 8, 8]


def forward(unet, b=2, **kw):
    """Two fixed rows of inputs (the second with padded context), of which the first `b`."""
    torch.manual_seed(1)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 900])
    inputs = dict(context=torch.randn(2, 5, 6), context_mask=torch.tensor([[True] * 5, [True] * 3 + [False] * 2]),
                  added_time_embed=torch.randn(2, 16))
    return unet(x[:b], t[:b], **{k: v[:b] for k, v in inputs.items()} | kw)


def test_unet_rows_are_independent_of_the_batch():
    unet = tiny()
    both = forward(unet)
    assert both.shape == (2, 6, 8, 8) and both.abs().max() > 0.01
    assert (forward(unet, b=1) - both[:1]).abs().max() < 1e-5
    assert torch.equal(unet(torch.zeros(1, 3, 8, 8), torch.tensor(5), context=torch.zeros(1, 2, 6), added_time_embed=torch.zeros(1, 16)),
                       unet(torch.zeros(1, 3, 8, 8), torch.tensor([5]), context=torch.zeros(1, 2, 6), added_time_embed=torch.zeros(1, 16)))


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(context=None), r"this U-Net attends to context tokens: pass context \(b, n, 6\)"),
        (dict(added_time_embed=None), r"this U-Net needs added_time_embed \(b, 16\)"),
        (dict(context=torch.zeros(2, 5, 4)), r"context must have shape \(2, n, 6\), got \(2, 5, 4\)"),
        (dict(context_mask=torch.ones(2, 4, dtype=torch.bool)), r"context_mask must have shape \(b, n\) matching context"),
    ],
)
def test_unet_input_errors_name_the_value(kw, message):
    with pytest.raises(ValueError, match=message):
        forward(tiny(), **kw)


def test_unet_shape_errors():
    unet = tiny()
    with pytest.raises(ValueError, match=r"x must have shape \(b, 3, h, w\), got \(1, 4, 8, 8\)"):
        unet(torch.zeros(1, 4, 8, 8), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"height and width \(5, 5\) must be multiples of 2"):
        unet(torch.zeros(1, 3, 5, 5), torch.tensor([1]))


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(widths=(4, 6), norm_groups=4), r"every width must be a multiple of norm_groups=4, got widths \(4, 6\)"),
        (dict(context_dim=None), "attention layers read context tokens: give context_dim"),
        (dict(levels=(True,)), r"attention levels \(True,\) need one value per width \(2\)"),
        (dict(head_dim=3), r"attention widths \[8, 8\] are not multiples of head_dim=3"),
        (dict(sample_size=6, widths=(4, 8, 8)), "sample_size 6 must be a multiple of 4"),
        (dict(bogus=1), "AdmUnet got unknown option"),
    ],
)
def test_unet_config_errors(kw, message):
    with pytest.raises((ValueError, TypeError), match=message):
        tiny(**kw)


def test_unet_is_rebuilt_from_its_config_alone():
    unet = tiny()
    rebuilt = AdmUnet.from_config(AdmUnetConfig.from_dict(unet.config.to_dict()))
    assert rebuilt.config == unet.config
    rebuilt.load_state_dict(unet.state_dict(), strict=True)
    assert torch.equal(forward(rebuilt.eval()), forward(unet))


def test_text_proj_tokens_take_every_fourth_feature():
    torch.manual_seed(0)
    proj = TextProj(clip_dim=6, time_embed_dim=10, context_dim=3, num_image_tokens=4).eval()
    image, text = torch.randn(2, 6), torch.randn(2, 6)
    states, mask = torch.randn(2, 7, 6), torch.tensor([[True] * 7, [True] * 2 + [False] * 5])
    out = proj(image, text, states, mask)
    flat = proj.image_embed_to_tokens(image)  # (2, 3 · 4)
    for i in range(4):
        assert torch.equal(out["context"][:, i], flat[:, i::4])
    assert torch.allclose(out["context"][:, 4:], torch.nn.functional.layer_norm(proj.text_states_proj(states), (3,),
                          proj.text_states_norm.weight, proj.text_states_norm.bias))
    assert torch.equal(out["added_time_embed"], proj.text_embed_to_time(text) + proj.image_embed_to_time(image))
    assert out["context_mask"][1].tolist() == [True] * 6 + [False] * 5
    assert torch.equal(proj(image, text, states)["context_mask"], torch.ones(2, 11, dtype=torch.bool))
    assert torch.equal(proj.null_image_embeds(3), proj.null_image_embed.expand(3, 6))
    with pytest.raises(ValueError, match=r"text_encodings must have shape \(2, n, 6\), got \(2, 7, 5\)"):
        proj(image, text, states[..., :5])
