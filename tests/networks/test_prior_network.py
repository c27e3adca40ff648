"""DiffusionPriorNetwork and the shared nn layers: parity with dalle2-pytorch 1.1.0, padding, dropout masks."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from dalle2_core.nn import CausalTransformer, CausalTransformerConfig, LayerNorm, RelPosBias, RotaryEmbedding
from dalle2_core.prior import DiffusionPriorNetwork, DiffusionPriorNetworkConfig

FIXTURE = Path(__file__).parents[1] / "fixtures" / "prior_net_dalle2_pytorch_1_1_0.safetensors"


def tiny_net(**kwargs):
    torch.manual_seed(0)
    opts = dict(dim=16, depth=2, dim_head=8, heads=2, max_text_len=6, num_timesteps=10)
    return DiffusionPriorNetwork(**{**opts, **kwargs}).eval()


def inputs(b=3, n=4, dim=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, dim, generator=g),
        torch.randint(0, 10, (b,), generator=g),
        torch.randn(b, dim, generator=g),
        torch.randn(b, n, dim, generator=g),
    )


def test_matches_dalle2_pytorch_1_1_0_network():
    # the fixture holds a tiny 1.1.0 network's state dict, inputs and output (rotary-embedding-torch 0.1.5)
    data = load_file(FIXTURE)
    state = {k.removeprefix("net."): v for k, v in data.items() if k.startswith("net.") and "rotary_emb.freqs" not in k}
    state["null_text_encodings"] = state.pop("null_text_embed")
    net = DiffusionPriorNetwork(
        dim=16, depth=2, dim_head=8, heads=2, ff_mult=2, num_timesteps=10, max_text_len=5, normformer=True, pb_relax_alpha=128
    ).eval()
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert sorted(missing) == ["null_image_embed", "null_text_embeds"] and unexpected == []
    with torch.no_grad():
        out = net(data["in.image_embed"], data["in.t"], text_embed=data["in.text_embed"], text_encodings=data["in.text_encodings"])
    assert (out - data["out"]).abs().max().item() < 1e-5
    # the modern default (no PB-relax bias scaling) is a different function of the same weights
    modern = DiffusionPriorNetwork.from_config(net.config.to_dict() | {"transformer": net.config.transformer.to_dict() | {"pb_relax_alpha": None}})
    modern.load_state_dict(net.state_dict())
    with torch.no_grad():
        out_modern = modern.eval()(data["in.image_embed"], data["in.t"], text_embed=data["in.text_embed"], text_encodings=data["in.text_encodings"])
    assert (out_modern - data["out"]).abs().max().item() > 1e-2


def test_all_zero_encodings_take_the_learned_null_position_vectors():
    net = tiny_net()
    x, t, text_embed, enc = inputs()
    enc[:, 2:] = 0  # positions 2, 3 are padding
    with torch.no_grad():
        out_zero = net(x, t, text_embed=text_embed, text_encodings=enc)
        explicit = enc.clone()
        explicit[:, 2:] = net.null_text_encodings[:, 2:4]  # the null vectors themselves, passed as real tokens
        out_explicit = net(x, t, text_embed=text_embed, text_encodings=explicit)
        # text_mask = False marks padding too, whatever the encoding holds
        garbage = enc.clone()
        garbage[:, 2:] = 7.0
        mask = torch.tensor([[True, True, False, False]]).expand(3, -1)
        out_masked = net(x, t, text_embed=text_embed, text_encodings=garbage, text_mask=mask)
        # a shorter sequence is padded with the remaining nulls: same as passing the two zero rows
        out_short = net(x, t, text_embed=text_embed, text_encodings=enc[:, :2])
    assert torch.allclose(out_zero, out_explicit, atol=1e-6)
    assert torch.allclose(out_zero, out_masked, atol=1e-6)
    assert torch.allclose(out_zero, out_short, atol=1e-6)
    # and the null vectors really are read: changing one changes the output
    with torch.no_grad():
        net.null_text_encodings[:, 3] += torch.randn(16, generator=torch.Generator().manual_seed(5))
        out_changed = net(x, t, text_embed=text_embed, text_encodings=enc)
    assert (out_changed - out_zero).abs().max().item() > 1e-3


def test_sequence_length_and_no_padding_without_text_encodings():
    net = tiny_net(num_time_embeds=2, num_image_embeds=3, num_text_embeds=2)
    seen = []
    net.causal_transformer.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    x, t, text_embed, enc = inputs()
    with torch.no_grad():
        out = net(x, t, text_embed=text_embed)
        net(x, t, text_embed=text_embed, text_encodings=enc)
    assert out.shape == (3, 16)
    assert seen == [2 + 2 + 3 + 1, 6 + 2 + 2 + 3 + 1]  # max_text_len 6 only when encodings are given


def test_cond_drop_mask_replaces_the_whole_text_condition():
    net = tiny_net()
    x, t, text_embed, enc = inputs()
    drop = torch.tensor([True, False, True])
    with torch.no_grad():
        a = net(x, t, text_embed=text_embed, text_encodings=enc, cond_drop_mask=drop)
        b = net(x, t, text_embed=text_embed + 1, text_encodings=enc * 2, cond_drop_mask=drop)
        plain = net(x, t, text_embed=text_embed, text_encodings=enc)
        none_dropped = net(x, t, text_embed=text_embed, text_encodings=enc, cond_drop_mask=torch.zeros(3, dtype=torch.bool))
    assert torch.allclose(a[drop], b[drop], atol=1e-6)  # dropped rows ignore the text entirely
    assert (a[~drop] - b[~drop]).abs().max().item() > 1e-3
    assert torch.equal(plain, none_dropped)
    assert torch.allclose(a[~drop], plain[~drop], atol=1e-6)


def test_image_drop_mask_ignores_the_noised_embedding():
    net = tiny_net()
    x, t, text_embed, _ = inputs()
    drop = torch.tensor([True, True, True])
    with torch.no_grad():
        a = net(x, t, text_embed=text_embed, image_drop_mask=drop)
        b = net(x * 3, t, text_embed=text_embed, image_drop_mask=drop)
    assert torch.allclose(a, b, atol=1e-6)


def test_continuous_time_and_gradients_reach_every_parameter():
    net = tiny_net(num_timesteps=None, num_text_embeds=2).train()
    x, _, text_embed, enc = inputs()
    t = torch.tensor([0, 50, 999])
    out = net(x, t, text_embed=text_embed, text_encodings=enc[:, :2], cond_drop_mask=torch.tensor([True, False, False]), image_drop_mask=torch.tensor([False, True, False]))
    out.square().mean().backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []


def test_causal_transformer_is_causal():
    torch.manual_seed(0)
    tr = CausalTransformer(16, CausalTransformerConfig(depth=2, dim_head=8, heads=2)).eval()
    x = torch.randn(2, 7, 16)
    y = x.clone()
    y[:, 4:] += torch.randn(2, 3, 16)
    with torch.no_grad():
        a, b = tr(x), tr(y)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)
    assert (a[:, 4:] - b[:, 4:]).abs().max().item() > 1e-3


def test_key_mask_blocks_masked_positions():
    torch.manual_seed(0)
    tr = CausalTransformer(16, CausalTransformerConfig(depth=1, dim_head=8, heads=2)).eval()
    x = torch.randn(1, 5, 16)
    y = x.clone()
    y[:, 1] = 100.0
    mask = torch.tensor([[True, False, True, True, True]])
    with torch.no_grad():
        a, b = tr(x, mask=mask), tr(y, mask=mask)
    assert torch.allclose(a[:, 2:], b[:, 2:], atol=1e-5)


def test_rotary_depends_only_on_relative_position():
    rot = RotaryEmbedding(8)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 12, generator=g), torch.randn(1, 12, generator=g)
    seq_q = q.expand(10, -1)[None]  # (1, 10, 12): the same vector at positions 0..9
    seq_k = k.expand(10, -1)[None]
    rq, rk = rot(seq_q)[0], rot(seq_k)[0]
    dots = rq @ rk.T  # (10, 10)
    assert torch.allclose(dots[2, 5], dots[6, 9], atol=1e-5)  # offset 3 at two places
    assert not torch.allclose(dots[2, 5], dots[2, 6], atol=1e-3)
    assert torch.equal(rq[:, 8:], seq_q[0, :, 8:])  # features past the rotary dim pass through
    assert torch.equal(rq[0], q[0])  # position 0 is not rotated
    # interleaved pairs: at position 1 the first pair turns by 1 radian
    x = torch.zeros(1, 2, 8)
    x[0, :, 0] = 1.0
    out = rot(x)[0, 1, :2]
    assert torch.allclose(out, torch.tensor([torch.cos(torch.tensor(1.0)), torch.sin(torch.tensor(1.0))]), atol=1e-6)


def test_relative_position_buckets():
    bias = RelPosBias(heads=2)
    offsets = torch.tensor([1, 0, -1, -15, -16, -20, -127, -128, -1000])
    assert bias.bucket(offsets).tolist() == [0, 0, 1, 15, 16, 17, 31, 31, 31]
    assert bias(3, 4, device=torch.device("cpu")).shape == (2, 3, 4)


def test_layernorm_is_bias_free_and_stable_variant_is_scale_invariant():
    norm = LayerNorm(6)
    with torch.no_grad():
        norm.g.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(4, 6)
    assert torch.allclose(norm(x), F.layer_norm(x, (6,), eps=1e-5) * torch.arange(1.0, 7.0), atol=1e-6)
    assert [n for n, _ in norm.named_parameters()] == ["g"]
    stable = LayerNorm(6, stable=True)
    x = torch.rand(4, 6) + 0.5
    assert torch.allclose(stable(x), stable(x * 1e4), atol=1e-5)


def test_bad_inputs_raise_naming_the_value():
    net = tiny_net()
    x, t, text_embed, enc = inputs()
    with pytest.raises(ValueError, match="max_text_len=6"):
        net(x, t, text_embed=text_embed, text_encodings=torch.randn(3, 7, 16))
    with pytest.raises(ValueError, match=r"image_embed must be \(b, 16\)"):
        net(torch.randn(3, 8), t, text_embed=text_embed)
    with pytest.raises(ValueError, match="cond_drop_mask must be a bool"):
        net(x, t, text_embed=text_embed, cond_drop_mask=torch.zeros(3))
    with pytest.raises(TypeError, match="'dept'"):
        DiffusionPriorNetwork(dim=16, dept=2)
    with pytest.raises(ValueError, match="heads must be >= 1, got 0"):
        DiffusionPriorNetwork(dim=16, depth=1, heads=0)


def test_config_round_trip_rebuilds_the_same_function():
    net = tiny_net(normformer=True, norm_in=True, num_image_embeds=2)
    config = DiffusionPriorNetworkConfig.from_dict(net.config.to_dict())
    assert config == net.config
    clone = DiffusionPriorNetwork.from_config(net.config.to_dict()).eval()
    clone.load_state_dict(net.state_dict())
    x, t, text_embed, enc = inputs()
    with torch.no_grad():
        assert torch.equal(net(x, t, text_embed=text_embed, text_encodings=enc), clone(x, t, text_embed=text_embed, text_encodings=enc))


def test_runs_in_bfloat16_when_the_caller_casts():
    net = tiny_net(num_timesteps=None).to(torch.bfloat16)
    x, t, text_embed, enc = (v.to(torch.bfloat16) if v.is_floating_point() else v for v in inputs())
    with torch.no_grad():
        out = net(x, t, text_embed=text_embed, text_encodings=enc)
        full = net.float()(*(v.float() if v.is_floating_point() else v for v in (x, t)), text_embed=text_embed.float(),
                           text_encodings=enc.float())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    # the same function at bfloat16's precision (8 bits of mantissa: ~0.4 % per operation, a few layers deep)
    assert (out.float() - full).abs().max() < 0.05 * full.abs().max() and full.abs().max() > 0.1
