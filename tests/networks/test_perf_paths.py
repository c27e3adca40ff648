"""The fast paths (issue 10) compute what the plain paths compute: cached text prefix, encode-once guidance,
selective recomputation."""

import pytest
import torch

from dalle2_core.diffusion import classifier_free_guidance
from dalle2_core.nn import CausalTransformer, CausalTransformerConfig
from dalle2_core.prior import DiffusionPrior, DiffusionPriorNetwork

DIM = 16


def tiny_net(**kwargs):
    torch.manual_seed(0)
    opts = dict(dim=DIM, depth=2, dim_head=8, heads=2, max_text_len=6, num_timesteps=10)
    return DiffusionPriorNetwork(**{**opts, **kwargs}).eval()


def inputs(b=5, n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(b, n, DIM, generator=g)
    enc[:, 3:] = 0  # padding
    return (
        torch.randn(b, DIM, generator=g),
        torch.randint(0, 10, (b,), generator=g),
        torch.randn(b, DIM, generator=g),
        enc,
    )


@pytest.mark.parametrize("drop", [None, [False] * 5, [True] * 5, [False, True, False, True, True], [True, False, False, False, False]])
@pytest.mark.parametrize("options", [{}, dict(pb_relax_alpha=128, normformer=True, norm_in=True, num_text_embeds=2)])
def test_cached_text_prefix_gives_the_same_numbers_as_the_full_sequence(drop, options):
    net = tiny_net(**options)
    x, t, text_embed, enc = inputs()
    drop = None if drop is None else torch.tensor(drop)
    with torch.no_grad():
        full = net(x, t, text_embed=text_embed, text_encodings=enc, cond_drop_mask=drop)
        cached = net(x, t, text_prefix=net.encode_text(text_embed, enc, None, drop))
        no_encodings = net(x, t, text_embed=text_embed, cond_drop_mask=drop)
        cached_no_encodings = net(x, t, text_prefix=net.encode_text(text_embed, cond_drop_mask=drop))
    if drop is None or not drop.any():
        # bit for bit: the full path splits the text off the same way
        assert torch.equal(full, cached) and torch.equal(no_encodings, cached_no_encodings)
    else:
        # dropped rows are encoded once for all (a smaller batch): equal up to rounding
        assert torch.allclose(full, cached, atol=1e-5) and torch.allclose(no_encodings, cached_no_encodings, atol=1e-5)
    assert full.abs().mean().item() > 0.1


def test_dropped_rows_share_one_encoding_and_keep_their_values():
    net = tiny_net()
    _, _, text_embed, enc = inputs()
    drop = torch.tensor([False, True, False, True, True])
    with torch.no_grad():
        prefix = net.encode_text(text_embed, enc, None, drop)
        # every dropped row is the all-null text, whatever text it was given
        other = net.encode_text(text_embed.flip(0), enc.flip(0), None, drop)
    k, v = prefix.kv[-1]
    assert prefix.length == 6 + 1  # max_text_len positions + one text embed token
    assert torch.equal(k[1], k[3]) and torch.equal(v[1], v[4])
    assert torch.equal(k[drop], other.kv[-1][0][drop])
    assert (k[0] - k[2]).abs().max().item() > 1e-3


def test_transformer_prefix_split_matches_the_whole_sequence():
    torch.manual_seed(0)
    tr = CausalTransformer(DIM, CausalTransformerConfig(depth=3, dim_head=8, heads=2)).eval()
    x = torch.randn(2, 9, DIM)
    with torch.no_grad():
        whole = tr(x)
        split = tr(x, prefix_len=6)
        cached = tr(x[:, 6:], prefix=tr.encode_prefix(x[:, :6]))
    assert split.shape == (2, 3, DIM)
    assert torch.allclose(whole[:, 6:], split, atol=1e-5)
    assert torch.equal(split, cached)
    for bad in (9, 12):
        with pytest.raises(ValueError, match=f"prefix_len must be in 1..8 for 9 positions, got {bad}"):
            tr(x, prefix_len=bad)
    with pytest.raises(ValueError, match="prefix_len cannot be combined with prefix or mask"):
        tr(x, prefix_len=3, mask=torch.ones(2, 9, dtype=torch.bool))


def test_training_gradients_flow_through_the_split_text():
    net = tiny_net().train()
    x, t, text_embed, enc = inputs()
    text_embed.requires_grad_(True)
    net(x, t, text_embed=text_embed, text_encodings=enc).square().mean().backward()
    assert text_embed.grad.abs().sum().item() > 0
    # every weight but the nulls of conditions this call keeps (text embed, image) gets a gradient
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == ["null_text_embeds", "null_image_embed"]


def test_prefix_and_text_arguments_are_exclusive_and_batch_checked():
    net = tiny_net()
    x, t, text_embed, enc = inputs()
    prefix = net.encode_text(text_embed, enc)
    with pytest.raises(ValueError, match="either text_prefix or the text arguments"):
        net(x, t, text_embed=text_embed, text_prefix=prefix)
    with pytest.raises(ValueError, match="encoded for batch 5, image_embed has 2"):
        net(x[:2], t[:2], text_prefix=prefix)
    with pytest.raises(ValueError, match=r"text_embed must be \(5, 16\), got None"):
        net(x, t)


class CountingNet:
    """cond branch: x + embed, null branch: x; `encode` counts how often conditions are prepared."""

    def __init__(self):
        self.encodes, self.calls = 0, 0

    def encode(self, cond_drop_mask, embed):
        self.encodes += 1
        return dict(prepared=torch.where(cond_drop_mask[:, None], torch.zeros_like(embed), embed))

    def __call__(self, x, t, prepared):
        self.calls += 1
        return x + prepared


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_guidance_encodes_the_conditions_once_per_run(scale):
    net, embed = CountingNet(), torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    model = classifier_free_guidance(net, scale, encode=net.encode, embed=embed)
    x, t = torch.ones(2, 2), torch.tensor([3, 4])
    outs = [model(x * i, t) for i in range(4)]
    assert net.encodes == 1 and net.calls == 4
    assert torch.allclose(outs[2], 2 * x + embed * scale)  # uncond x + (cond - uncond) * scale
    with pytest.raises(ValueError, match="encoded its conditions for batch 2, got batch 1"):
        model(x[:1], t[:1])


def test_prior_sampling_encodes_the_text_once_and_matches_uncached_guidance():
    torch.manual_seed(0)
    net = DiffusionPriorNetwork(dim=DIM, depth=2, dim_head=8, heads=2, max_text_len=6)
    prior = DiffusionPrior(net, image_embed_dim=DIM, timesteps=10, cond_drop_prob=0.2)
    calls = []
    encode_text = net.encode_text
    net.encode_text = lambda *a, **k: calls.append(1) or encode_text(*a, **k)
    _, _, text_embed, enc = inputs(b=3)
    noise = torch.randn(3, DIM, generator=torch.Generator().manual_seed(2))
    out = prior.denoise(noise, text_embed=text_embed, text_encodings=enc, cond_scale=3.0, sampler="ddim")
    assert calls == [1]

    def by_hand(x, t):  # both branches through the plain forward, at every step
        cond = net(x, t, text_embed=text_embed, text_encodings=enc)
        uncond = net(x, t, text_embed=text_embed, text_encodings=enc, cond_drop_mask=torch.ones(3, dtype=torch.bool))
        return uncond + (cond - uncond) * 3.0

    from dalle2_core.diffusion import sample

    with torch.no_grad():
        expected = sample(by_hand, prior.diffusion, noise, sampler="ddim")
    assert torch.allclose(out, expected, atol=1e-5)
    assert out.abs().mean().item() > 0.1


def _saved_bytes(fn):
    """Bytes of the non-parameter tensors autograd keeps for the backward pass of fn()."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


def test_unet_block_recomputes_norm_and_film_with_the_same_gradients():
    from dalle2_core.decoder.unet_blocks import Block

    torch.manual_seed(0)
    block = Block(8, 16, groups=4)
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    scale, shift = torch.randn(2, 16, 1, 1, requires_grad=True), torch.randn(2, 16, 1, 1, requires_grad=True)
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}

    def grads(fn):
        out, saved = _saved_bytes(fn)
        out.square().sum().backward()
        got = [t.grad.clone() for t in (x, scale, shift, *block.parameters())]
        for t in (x, scale, shift, *block.parameters()):
            t.grad = None
        return out.detach(), got, sum(v for k, v in saved.items() if k not in params)

    fast_out, fast, fast_bytes = grads(lambda: block(x, (scale, shift), recompute=True))
    plain_out, plain, plain_bytes = grads(lambda: block._norm_act(block.project(x), (scale, shift)))
    assert torch.equal(fast_out, plain_out)
    assert all(torch.equal(a, b) for a, b in zip(fast, plain))
    map_bytes = 2 * 16 * 16 * 16 * 4
    assert fast_bytes <= plain_bytes - 2 * map_bytes  # norm and FiLM outputs are no longer kept
    # recomputation is a choice: without it the block keeps what the plain path keeps
    _, kept, kept_bytes = grads(lambda: block(x, (scale, shift)))
    assert kept_bytes == plain_bytes and all(torch.equal(a, b) for a, b in zip(kept, plain))
    with torch.no_grad():
        assert torch.equal(block(x, (scale, shift)), plain_out)


def test_unet_attention_keeps_the_input_memory_layout():
    from dalle2_core.decoder.unet_attention import LinearAttention, SpatialCrossAttention, SpatialSelfAttention
    from dalle2_core.nn import ChanLayerNorm

    torch.manual_seed(0)
    x, context = torch.randn(2, 16, 8, 8), torch.randn(2, 3, 8)
    layers = [
        (ChanLayerNorm(16), ()),
        (LinearAttention(16, heads=2, dim_head=8), ()),
        (SpatialSelfAttention(16, heads=2, dim_head=8), ()),
        (SpatialCrossAttention(16, context_dim=8, heads=2, dim_head=8), (context,)),
    ]
    for layer, extra in layers:
        with torch.no_grad():
            out = layer(x, *extra)
            out_cl = layer(x.contiguous(memory_format=torch.channels_last), *extra)
        assert out.is_contiguous(), type(layer).__name__
        assert out_cl.is_contiguous(memory_format=torch.channels_last), type(layer).__name__
        assert torch.allclose(out, out_cl, atol=1e-5) and out.abs().mean().item() > 0.1
    # the channel norm is a LayerNorm over c at every pixel
    ref = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (16,)).permute(0, 3, 1, 2)
    assert torch.allclose(ChanLayerNorm(16)(x), ref, atol=1e-6)


def test_cross_attention_recomputed_in_backward_gives_the_same_gradients():
    from einops import rearrange

    from dalle2_core.decoder.unet_attention import SpatialCrossAttention

    torch.manual_seed(0)
    layer = SpatialCrossAttention(16, context_dim=8, heads=2, dim_head=8)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    context = torch.randn(2, 3, 8, requires_grad=True)

    def plain():
        seq = rearrange(x, "b c h w -> b (h w) c")
        return x + rearrange(layer.attn(seq, context), "b (h w) c -> b c h w", h=8)

    results = []
    for fn in (lambda: layer(x, context, recompute=True), plain):
        out, saved = _saved_bytes(fn)
        out.square().sum().backward()
        results.append((out.detach(), [t.grad.clone() for t in (x, context, *layer.parameters())], sum(saved.values())))
        for t in (x, context, *layer.parameters()):
            t.grad = None
    (fast_out, fast, fast_bytes), (plain_out, plain_grads, plain_bytes) = results
    assert torch.equal(fast_out, plain_out)
    assert all(torch.equal(a, b) for a, b in zip(fast, plain_grads))
    assert fast_bytes < plain_bytes / 2


def test_swiglu_recomputed_in_backward_gives_the_same_gradients_with_less_memory():
    from dalle2_core.nn import FeedForward

    torch.manual_seed(0)
    ff = FeedForward(16, mult=4)
    x = torch.randn(2, 5, 16, requires_grad=True)

    def plain():
        h = ff[1](ff[0](x))
        a, gate = h.chunk(2, dim=-1)
        return ff[5](a * torch.nn.functional.silu(gate))

    results = []
    for fn in (lambda: ff(x), plain):
        out, saved = _saved_bytes(fn)
        out.square().sum().backward()
        results.append((out.detach(), [t.grad.clone() for t in (x, *ff.parameters())], sum(saved.values())))
        for t in (x, *ff.parameters()):
            t.grad = None
    (fast_out, fast, fast_bytes), (plain_out, plain_grads, plain_bytes) = results
    assert torch.equal(fast_out, plain_out)
    assert all(torch.equal(a, b) for a, b in zip(fast, plain_grads))
    assert fast_bytes <= plain_bytes - 2 * 5 * 64 * 4  # SiLU(gate) (b, n, inner) is not kept


def _compiled_matches_eager(net, *args, **kwargs):
    """Forward and parameter gradients of `net` vs `torch.compile(net, fullgraph=True)` (no graph break)."""
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    results = []
    for module in (net, compiled):
        net.zero_grad(set_to_none=True)
        out = module(*args, **kwargs)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None]))
    (eager, eager_grads), (comp, comp_grads) = results
    assert len(eager_grads) == len(comp_grads) > 0
    torch.testing.assert_close(comp, eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(comp_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    return eager


def test_unet_compiles_as_one_graph_with_the_same_numbers():
    from dalle2_core.decoder import Unet

    torch.manual_seed(0)
    # one block of each kind per stage (tracing time grows with the block count, not the map size)
    unet = Unet(dim=8, image_embed_dim=16, text_embed_dim=16, cond_dim=16, dim_mults=(1, 2), cond_on_text_encodings=True,
                self_attn=(False, True), attn_heads=2, attn_dim_head=8, num_resnet_blocks=1).train()
    torch.nn.init.normal_(unet.to_out.weight, std=0.1)  # the head starts at zero: make the output depend on the net
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([3, 700])
    cond = dict(image_embed=torch.randn(2, 16, generator=g), text_encodings=torch.randn(2, 5, 16, generator=g),
                cond_drop_mask=torch.tensor([False, True]))
    out = _compiled_matches_eager(unet, x, t, **cond)
    assert out.abs().mean() > 1e-3


def test_prior_network_compiles_as_one_graph_with_the_same_numbers():
    net = tiny_net().train()
    x, t, text_embed, enc = inputs()
    _compiled_matches_eager(net, x, t, text_embed=text_embed, text_encodings=enc, cond_drop_mask=torch.tensor([False, True, False, False, True]))


def test_bfloat16_on_the_cpu_loads_convolutions_channels_last_with_the_same_images():
    from dalle2_core.checkpoint import SamplingSettings
    from dalle2_core.hub import bundled_path
    from dalle2_core.nn import prefer_channels_last
    from dalle2_core.pipeline import load_pipeline

    def conv_weights(pipeline):
        return [p for p in pipeline.parameters() if p.dim() == 4]

    plain = load_pipeline(bundled_path("shapes"), dtype=torch.bfloat16)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights(plain))
    assert not all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights(load_pipeline(bundled_path("shapes"))))
    module = torch.nn.Conv2d(3, 8, 3)
    assert prefer_channels_last(module, "cuda", torch.bfloat16).weight.is_contiguous()  # another device: unchanged
    assert prefer_channels_last(module, None, torch.float32).weight.is_contiguous()

    settings = SamplingSettings(steps=(3, 2), prior_steps=2, sampler="ddim")
    contiguous = load_pipeline(bundled_path("shapes"), dtype=torch.bfloat16)
    contiguous.to(memory_format=torch.contiguous_format)
    assert not any(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in conv_weights(contiguous))
    images = [p.generate(["a red circle on the left"], settings, generator=[torch.Generator().manual_seed(0)]).float()
              for p in (plain, contiguous)]
    # one computation in another summation order, both in bfloat16 (8 bits of mantissa: steps of 2^-8 near 1)
    assert (images[0] - images[1]).abs().max() <= 0.05
