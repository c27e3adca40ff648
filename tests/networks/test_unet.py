"""Decoder Unet: options build and train, conditioning and null conditioning, config round trips."""

import json

import pytest
import torch

from dalle2_core import Unet
from dalle2_core.decoder import UnetConfig

TINY = dict(
    dim=16,
    dim_mults=(1, 2),
    image_embed_dim=8,
    cond_dim=16,
    num_resnet_blocks=1,
    attn_heads=2,
    attn_dim_head=8,
    cross_attn_heads=2,
    cross_attn_dim_head=8,
    max_text_len=8,
)


def make(seed=0, **kwargs):
    """A tiny Unet whose zero-initialised head is made random, so outputs depend on the input."""
    torch.manual_seed(seed)
    unet = Unet(**{**TINY, **kwargs})
    with torch.no_grad():
        unet.to_out.weight.normal_(0, 0.2)
    return unet


def inputs(unet, b=2, size=16, seed=1, n_text=5):
    g = torch.Generator().manual_seed(seed)
    cond = unet.config.conditioning
    x = torch.randn(b, unet.channels, size, size, generator=g)
    t = torch.tensor([3, 700])[:b]
    kw = dict(image_embed=torch.randn(b, cond.image_embed_dim, generator=g)) if cond.cond_on_image_embeds else {}
    if cond.cond_on_text_encodings:
        kw["text_encodings"] = torch.randn(b, n_text, cond.text_embed_dim, generator=g)
        kw["text_mask"] = torch.arange(n_text)[None, :] < torch.tensor([[3], [n_text]])[:b]
    if cond.lowres_cond:
        kw["lowres_cond_img"] = torch.rand(b, unet.channels, size, size, generator=g)
    if cond.lowres_noise_cond:
        kw["lowres_noise_level"] = torch.tensor([0, 250])[:b]
    return x, t, kw


def test_output_shape_and_learned_variance_channels():
    unet = make()
    x, t, kw = inputs(unet)
    assert unet(x, t, **kw).shape == (2, 3, 16, 16)
    lv = make(learned_variance=True)
    assert lv.channels_out == 6 and lv(x, t, **kw).shape == (2, 6, 16, 16)
    assert make(learned_sigma=True).channels_out == 6
    assert make(channels=4, channels_out=5).channels_out == 5


def test_image_conditioning_defaults_to_whether_an_embed_dim_is_given():
    with_dim = Unet(dim=8, dim_mults=(1, 2), image_embed_dim=4)
    without = Unet(dim=8, dim_mults=(1, 2))
    assert with_dim.cond_on_image_embeds is True and with_dim.config.conditioning.cond_on_image_embeds is True
    assert without.cond_on_image_embeds is False and not hasattr(without, "null_image_embed")
    assert with_dim.with_options(cond_on_image_embeds=True) is with_dim
    assert Unet(dim=8, image_embed_dim=4, cond_on_image_embeds=False).cond_on_image_embeds is False


def test_fresh_unet_predicts_zero():
    # the zero-initialised head (ADM) makes an untrained unet output exactly 0
    torch.manual_seed(0)
    unet = Unet(**TINY)
    x, t, kw = inputs(unet)
    assert unet(x, t, **kw).abs().max().item() == 0.0


OPTIONS = {
    "convnext": dict(block_type="convnext"),
    "use_convnext": dict(use_convnext=True),
    "linear_attn": dict(sparse_attn=True),
    "linear_attn_normalized": dict(sparse_attn=(True, False), linear_attn_normalize_v=True),
    "window_grid_attn": dict(sparse_attn=True, sparse_attn_window=2),
    "self_attn": dict(self_attn=True),
    "self_attn_per_stage": dict(self_attn=(False, True), sparse_attn=True),
    "memory_efficient": dict(memory_efficient=True, sparse_attn=True),
    "plain_init_conv": dict(init_cross_embed=False, init_conv_kernel_size=3),
    "init_cross_embed_kernels": dict(init_cross_embed_kernel_sizes=(1, 3), init_dim=8),
    "nearest_upsample": dict(pixel_shuffle_upsample=False),
    "unshuffle_downsample": dict(downsample_mode="unshuffle"),
    "cross_embed_downsample": dict(cross_embed_downsample=True),
    "lowres_cond": dict(lowres_cond=True, lowres_noise_cond=True, cond_on_image_embeds=False),
    "text_cond": dict(cond_on_text_encodings=True, text_embed_dim=12),
    "no_middle_attn": dict(attend_at_middle=False),
    "per_stage_blocks": dict(num_resnet_blocks=(1, 2), resnet_groups=(4, 8), scale_skip_connection=True),
    "final_conv_3": dict(final_conv_kernel_size=3, learned_variance=True),
    "image_not_added_to_time": dict(add_image_embeds_to_time=False, num_image_tokens=2, num_time_tokens=1),
    "unconditional": dict(cond_on_image_embeds=False),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_option_builds_runs_and_trains(name):
    unet = make(**OPTIONS[name])
    x, t, kw = inputs(unet)
    out = unet(x, t, **kw)
    assert out.shape == (2, unet.channels_out, 16, 16)
    assert torch.isfinite(out).all() and out.std().item() > 1e-3
    out.square().mean().backward()
    # every parameter takes part in the graph (no dead modules, DDP-safe)
    dead = [n for n, p in unet.named_parameters() if p.grad is None]
    assert dead == []
    assert next(unet.init_conv.parameters()).grad.abs().sum().item() > 0


def test_options_change_the_network():
    x, t, kw = inputs(make())
    base = make()(x, t, **kw)
    for name in ("convnext", "linear_attn", "window_grid_attn", "self_attn", "nearest_upsample", "no_middle_attn"):
        other = make(**OPTIONS[name])(x, t, **kw)
        assert (other - base).abs().max().item() > 1e-4, name


def test_null_conditioning_ignores_image_and_text():
    unet = make(cond_on_text_encodings=True, text_embed_dim=12)
    x, t, kw = inputs(unet, seed=1)
    _, _, kw2 = inputs(unet, seed=2)  # different image embeds and text
    drop = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        a = unet(x, t, **kw, cond_drop_mask=drop)
        b = unet(x, t, **kw2, cond_drop_mask=drop)
        c = unet(x, t, **kw)
        d = unet(x, t, **kw2)
        # dropping only the image still reads the text, and vice versa
        e = unet(x, t, **kw, image_cond_drop_mask=drop)
        f = unet(x, t, **{**kw, "text_encodings": kw2["text_encodings"]}, image_cond_drop_mask=drop)
        g = unet(x, t, **kw, text_cond_drop_mask=drop)
        h = unet(x, t, **{**kw, "image_embed": kw2["image_embed"]}, text_cond_drop_mask=drop)
        # a per-row mask drops only its rows
        row = unet(x, t, **kw2, cond_drop_mask=torch.tensor([True, False]))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert (c - d).abs().max().item() > 1e-3
    assert (e - f).abs().max().item() > 1e-4 and (g - h).abs().max().item() > 1e-3
    torch.testing.assert_close(row[0], a[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(row[1], d[1], rtol=0, atol=1e-6)


def test_text_padding_is_ignored_and_mask_defaults_to_nonzero_tokens():
    unet = make(cond_on_text_encodings=True, text_embed_dim=12)
    x, t, kw = inputs(unet, n_text=5)
    enc, mask = kw["text_encodings"], kw["text_mask"]  # row 0 has 3 real tokens
    noisy = enc.clone()
    noisy[0, 3:] = torch.randn(2, 12)
    longer = torch.cat((enc, torch.randn(2, 6, 12)), dim=1)  # past max_text_len=8: truncated
    longer_mask = torch.cat((mask, torch.ones(2, 6, dtype=torch.bool)), dim=1)
    zeroed = enc * mask[..., None]
    with torch.no_grad():
        ref = unet(x, t, image_embed=kw["image_embed"], text_encodings=enc, text_mask=mask)
        padded = unet(x, t, image_embed=kw["image_embed"], text_encodings=noisy, text_mask=mask)
        implicit = unet(x, t, image_embed=kw["image_embed"], text_encodings=zeroed)
        full = unet(x, t, image_embed=kw["image_embed"], text_encodings=longer, text_mask=longer_mask)
        cut = unet(x, t, image_embed=kw["image_embed"], text_encodings=longer[:, :8], text_mask=longer_mask[:, :8])
    torch.testing.assert_close(padded, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(implicit, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(full, cut, rtol=0, atol=1e-6)
    assert (full - ref).abs().max().item() > 1e-4


def test_lowres_noise_level_changes_output():
    unet = make(lowres_cond=True, lowres_noise_cond=True)
    x, t, kw = inputs(unet)
    with torch.no_grad():
        a = unet(x, t, **kw)
        b = unet(x, t, **{**kw, "lowres_noise_level": torch.tensor([500, 250])})
        c = unet(x, t, **{**kw, "lowres_cond_img": torch.zeros_like(x)})
    assert (a[0] - b[0]).abs().max().item() > 1e-4
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-6)
    assert (a - c).abs().max().item() > 1e-4


def test_timestep_dtype_and_scalar():
    unet = make()
    x, _, kw = inputs(unet)
    with torch.no_grad():
        a = unet(x, torch.tensor([5, 5]), **kw)
        b = unet(x, torch.tensor([5.0, 5.0]), **kw)
        c = unet(x, torch.tensor(5), **kw)
        d = unet(x, torch.tensor([6, 5]), **kw)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    assert (a[0] - d[0]).abs().max().item() > 1e-5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bogus_option=1), "bogus_option"),
        (dict(block_type="transformer"), "block_type 'transformer'.*resnet, convnext"),
        (dict(downsample_mode="avgpool"), "downsample_mode 'avgpool'"),
        (dict(self_attn=(True, False, True)), "self_attn has 3 values"),
        (dict(cond_on_text_encodings=True), "text_embed_dim"),
        (dict(image_embed_dim=None, cond_on_image_embeds=True), "image_embed_dim"),
        (dict(learned_variance=True, channels_out=3), "channels_out == 2 \\* channels = 6"),
        (dict(resnet_groups=5), "resnet_groups=5"),
    ],
)
def test_bad_options_are_named(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        Unet(**{**TINY, **kwargs})


def test_bad_inputs_are_named():
    unet = make(cond_on_text_encodings=True, text_embed_dim=12)
    x, t, kw = inputs(unet)
    with pytest.raises(ValueError, match="multiple of 2"):
        unet(torch.randn(2, 3, 15, 15), t, **kw)
    with pytest.raises(ValueError, match="image_embed must have shape \\(2, 8\\)"):
        unet(x, t, **{**kw, "image_embed": None})
    with pytest.raises(ValueError, match="pass text_encodings"):
        unet(x, t, **{**kw, "text_encodings": None, "text_mask": None})
    with pytest.raises(ValueError, match="cond_drop_mask must be a bool"):
        unet(x, t, **kw, cond_drop_mask=torch.ones(2))
    with pytest.raises(ValueError, match="lowres_cond=False"):
        unet(x, t, **kw, lowres_cond_img=x)
    with pytest.raises(ValueError, match="lowres_noise_cond=False"):
        unet(x, t, **kw, lowres_noise_level=torch.zeros(2))
    with pytest.raises(ValueError, match="sparse_attn_window=3"):
        w = make(sparse_attn=True, sparse_attn_window=3)
        w(*inputs(w)[:2], **inputs(w)[2])
    lowres = make(lowres_cond=True)
    with pytest.raises(ValueError, match="pass lowres_cond_img"):
        lowres(x, t, image_embed=kw["image_embed"])


def test_with_options_keeps_unrelated_options():
    unet = make(sparse_attn=True, memory_efficient=True, cond_on_text_encodings=True, text_embed_dim=12)
    assert unet.with_options(sparse_attn=True) is unet  # nothing changes: weights kept
    up = unet.with_options(lowres_cond=True, cond_on_image_embeds=False, channels=4, learned_variance=True)
    assert up is not unet and isinstance(up, Unet)
    assert (up.lowres_cond, up.cond_on_image_embeds, up.channels, up.channels_out) == (True, False, 4, 8)
    assert up.config.attention == unet.config.attention and up.config.blocks == unet.config.blocks
    assert up.cond_on_text_encodings and up.config.conditioning.text_embed_dim == 12
    assert unet.config.conditioning.lowres_cond is False  # the original is untouched
    assert up.init_conv.convs[0].weight.shape[1] == 8  # x and the low-res image stacked
    with pytest.raises(TypeError, match="bogus"):
        unet.with_options(bogus=True)


def test_config_json_round_trip_rebuilds_identical_model():
    unet = make(self_attn=(False, True), sparse_attn=True, cond_on_text_encodings=True, text_embed_dim=12)
    data = json.loads(json.dumps(unet.config.to_dict()))
    assert UnetConfig.from_dict(data) == unet.config
    torch.manual_seed(0)
    rebuilt = Unet.from_config(data)
    torch.manual_seed(0)
    direct = Unet(config=unet.config)
    shapes = {k: v.shape for k, v in unet.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    assert all(torch.equal(v, direct.state_dict()[k]) for k, v in rebuilt.state_dict().items())


def test_deterministic_given_seed():
    x, t, kw = inputs(make())
    with torch.no_grad():
        a = make(seed=3)(x, t, **kw)
        b = make(seed=3)(x, t, **kw)
        c = make(seed=4)(x, t, **kw)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max().item() > 1e-3


def test_gradient_checkpointing_gives_the_same_gradients():
    plain = make(sparse_attn=True, self_attn=(False, True))
    ckpt = make(sparse_attn=True, self_attn=(False, True), gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t, kw = inputs(plain)
    grads = []
    for unet in (plain, ckpt):
        unet.train()
        unet(x, t, **kw).square().mean().backward()
        grads.append({n: p.grad for n, p in unet.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)
    assert grads[0]["downs.0.init_block.block1.project.weight"].abs().sum().item() > 0


def test_gradient_checkpointing_turns_itself_on_for_large_training_batches(monkeypatch):
    import dalle2_core.decoder.unet as unet_module

    calls = []
    real = unet_module.checkpoint
    monkeypatch.setattr(unet_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    auto, never = make(), make(gradient_checkpointing=False)
    assert auto.config.blocks.gradient_checkpointing is None
    x, t, kw = inputs(auto)
    auto.train()(x, t, **kw)
    assert calls == []  # a small batch: plain forward
    monkeypatch.setattr(unet_module, "AUTO_CHECKPOINT_PIXELS", x.shape[0] * x.shape[-1] * x.shape[-2])
    auto(x, t, **kw)
    assert len(calls) > 0
    calls.clear()
    never.train()(x, t, **kw)
    with torch.no_grad():
        auto(x, t, **kw)
    assert calls == []  # off when asked, and never without gradients
