"""Performance choices keep the numbers: recomputation on or off, chunked guidance, Karlo's cached context
keys/values, the in-place guidance mix, and the compiled inference path (rounding level only)."""

import pytest
import torch

from dalle2_core.adm import AdmUnet
from dalle2_core.decoder import Decoder, Unet, unet as unet_module
from dalle2_core.diffusion import classifier_free_guidance
from dalle2_core.nn import compile_for_inference


def tiny_unet(**kw) -> Unet:
    torch.manual_seed(0)
    opts = dict(dim=8, image_embed_dim=16, cond_dim=16, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8,
                cross_attn_heads=2, cross_attn_dim_head=8, num_resnet_blocks=1)
    unet = Unet(**{**opts, **kw})
    torch.nn.init.normal_(unet.to_out.weight, std=0.1)  # the head starts at zero: make the output depend on the net
    return unet


def unet_inputs(b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 16, 16, generator=g), torch.tensor([3, 700][:b]), dict(image_embed=torch.randn(b, 16, generator=g))


def grads(unet, x, t, cond):
    unet.zero_grad(set_to_none=True)
    out = unet(x, t, **cond)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in unet.parameters() if p.grad is not None]


def test_selective_recompute_on_or_off_gives_the_same_gradients():
    x, t, cond = unet_inputs()
    on, off = tiny_unet(selective_recompute=True).train(), tiny_unet(selective_recompute=False).train()
    off.load_state_dict(on.state_dict())
    (a, ga), (b, gb) = grads(on, x, t, cond), grads(off, x, t, cond)
    assert torch.equal(a, b) and len(ga) == len(gb) > 10
    assert all(torch.equal(p, q) for p, q in zip(ga, gb))
    assert on.config.blocks.selective_recompute is True and off.config.to_dict()["blocks"]["selective_recompute"] is False


def test_selective_recompute_turns_itself_on_past_the_memory_budget(monkeypatch):
    unet = tiny_unet().train()
    x, *_ = unet_inputs()
    assert unet.config.blocks.selective_recompute is None
    estimate = unet.saved_activation_bytes(2, 16, 16)
    # pixels x (36 B per map element + 8.5 B per cross-attention feature): the final block at full resolution,
    # stage 1 (16 x 16, 2 blocks of 8 channels down and up), stage 2 (8 x 8, 16 channels, 3 cross-attentions of 16)
    assert estimate == 512 * 8 * 36 + 512 * 36 * 2 * 2 * 8 + 128 * (36 * 2 * 2 * 16 + 8.5 * 3 * 16)
    assert not unet._recomputing(x)
    monkeypatch.setattr(unet_module, "AUTO_RECOMPUTE_BYTES", estimate - 1)
    assert unet._recomputing(x)
    with torch.no_grad():
        assert not unet._recomputing(x)  # never in inference
    assert not unet.eval()._recomputing(x)


class RowCounter:
    """x * (1 + embed): records the batch of every call."""

    def __init__(self):
        self.rows = []

    def __call__(self, x, t, embed, cond_drop_mask):
        self.rows.append(x.shape[0])
        return x * (1 + torch.where(cond_drop_mask[:, None], torch.zeros_like(embed), embed))


@pytest.mark.parametrize("max_batch,calls", [(None, [6]), (6, [6]), (4, [4, 2]), (3, [3, 3]), (1, [1] * 6)])
def test_guidance_chunks_the_batched_branches_past_max_batch(max_batch, calls):
    embed = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.25, 3.0]])
    x, t = torch.randn(3, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2, 3])
    net = RowCounter()
    out = classifier_free_guidance(net, 3.0, max_batch=max_batch, embed=embed)(x, t)
    assert net.rows == calls
    assert torch.allclose(out, x + x * embed * 3.0)
    with pytest.raises(ValueError, match="max_batch must be None or a positive int, got 0"):
        classifier_free_guidance(net, 3.0, max_batch=0, embed=embed)


def test_in_place_guidance_mix_is_bit_identical_to_the_formula():
    g = torch.Generator().manual_seed(3)
    out = torch.randn(8, 3, 4, 4, generator=g)
    model = classifier_free_guidance(lambda x, t, cond_drop_mask: out, 3.7)
    cond, uncond = out[:4], out[4:]
    assert torch.equal(model(torch.zeros(4, 3, 4, 4), torch.zeros(4, dtype=torch.long)), uncond + (cond - uncond) * 3.7)


def test_decoder_sampling_under_a_row_cap_runs_smaller_forwards_with_the_same_images():
    unet = tiny_unet()
    decoder = Decoder(unet, image_size=16, timesteps=4).eval()
    embed = torch.nn.functional.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(2)), dim=-1)
    rows, net = [], decoder.unets[0]
    net.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    batched = decoder.sample(image_embed=embed, cond_scale=3.0, generator=gens())
    assert set(rows) == {6}
    net.sampling_max_batch = 2
    rows.clear()
    chunked = decoder.sample(image_embed=embed, cond_scale=3.0, generator=gens())
    assert rows[:3] == [2, 2, 2] and len(rows) == 3 * 4
    assert torch.allclose(chunked, batched, atol=1e-6) and batched.std() > 0.05


def test_karlo_context_keys_values_encoded_once_give_the_same_bits():
    torch.manual_seed(0)
    unet = AdmUnet(sample_size=8, in_channels=3, out_channels=6, widths=(4, 8), layers_per_block=2, norm_groups=2,
                   levels=(False, True), middle=True, head_dim=4, context_dim=6, added_time_embed=True, time_embed_dim=16).eval()
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 3, 8, 8, generator=g), torch.tensor([3, 90])
    cond = dict(context=torch.randn(2, 5, 6, generator=g), context_mask=torch.tensor([[True] * 5, [True] * 3 + [False] * 2]),
                added_time_embed=torch.randn(2, 16, generator=g))
    with torch.no_grad():
        encoded = unet.encode_context(**cond)
        assert len(encoded["context"].kv) == 2 + 3 + 1  # every attention layer of level 2 (down, up) and the middle
        assert torch.equal(unet(x, t, **encoded), unet(x, t, **cond))
        with pytest.raises(ValueError, match="context was encoded for batch 2, x has 1"):
            unet(x[:1], t[:1], **encoded)


def test_compiled_inference_path_matches_eager_at_rounding_level():
    from dalle2_core.decoder.unet_blocks import ResnetBlock

    torch.manual_seed(0)
    block = ResnetBlock(8, 16, time_cond_dim=8, groups=4).eval()
    x, emb = torch.randn(2, 8, 8, 8), torch.randn(2, 8)
    with torch.no_grad():
        eager = block(x, emb)
        compiled = compile_for_inference(block)
        fast = compiled(x, emb)
    assert compiled is block and not block.training
    torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-5)
    assert eager.abs().mean() > 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_inference_on_gpu_matches_eager_at_rounding_level():
    unet = tiny_unet().cuda().eval()
    x, t, cond = unet_inputs()
    x, t, cond = x.cuda(), t.cuda(), {k: v.cuda() for k, v in cond.items()}
    with torch.no_grad():
        eager = unet(x, t, **cond)
        fast = compile_for_inference(unet)(x, t, **cond)
    torch.testing.assert_close(fast, eager, rtol=1e-3, atol=1e-4)
    assert eager.abs().mean() > 1e-3


@pytest.mark.parametrize("post_norm", [False, True])
@pytest.mark.parametrize("shape", [(3, 7, 16), (5, 16)])
def test_feedforward_inference_in_place_glu_gives_the_same_bits(post_norm, shape):
    from dalle2_core.nn import FeedForward

    torch.manual_seed(0)
    ff = FeedForward(16, mult=4, post_activation_norm=post_norm).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        fast, plain = ff(x), torch.nn.Sequential.forward(ff, x)
    assert torch.equal(fast, plain) and fast.shape == (*shape[:-1], 16) and fast.abs().mean() > 0.01
