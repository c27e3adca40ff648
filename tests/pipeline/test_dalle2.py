"""DALLE2 and the unCLIP pipeline end to end with a tiny project CLIP: variations, slerp / interpolate, a latent stage."""

import math

import pytest
import torch

from dalle2_core import CLIP, DALLE2, Decoder, DiffusionPrior, DiffusionPriorNetwork, Unet, VQGanVAE
from dalle2_core.dalle2 import slerp
from dalle2_core.families.unclip.pipeline import UnclipPipeline
from dalle2_core.helpers import l2norm
from dalle2_core.pipeline import NonFiniteOutputError

LATENT = 16


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return CLIP(dim_text=LATENT, dim_image=32, dim_latent=LATENT, num_text_tokens=49408, text_enc_depth=1,
                text_seq_len=12, text_heads=2, visual_enc_depth=1, visual_image_size=32, visual_patch_size=8,
                visual_heads=2)


def tiny_unet(**kwargs):
    return Unet(**{**dict(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, attn_heads=2, attn_dim_head=8), **kwargs})


@pytest.fixture(scope="module")
def decoder(clip):
    torch.manual_seed(0)
    unets = (tiny_unet(image_embed_dim=LATENT, text_embed_dim=LATENT), tiny_unet())
    decoder = Decoder(unet=unets, clip=clip, image_sizes=(16, 32), timesteps=10, condition_on_text_encodings=True)
    for unet in decoder.unets:  # the zero-initialised heads would make every condition look alike
        torch.nn.init.normal_(unet.to_out.weight, std=0.1)
    return decoder.eval()


@pytest.fixture(scope="module")
def prior(clip):
    torch.manual_seed(0)
    net = DiffusionPriorNetwork(dim=LATENT, depth=1, dim_head=8, heads=2, num_timesteps=10)
    return DiffusionPrior(net=net, clip=clip, timesteps=10, cond_drop_prob=0.2).eval()


def test_dalle2_on_strings_returns_images_in_unit_range(prior, decoder):
    dalle2 = DALLE2(prior=prior, decoder=decoder, prior_num_samples=2)
    images = dalle2(["a red circle", "a blue square on the left"], cond_scale=2.0, prior_cond_scale=1.5,
                    steps=3, prior_steps=4, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 32, 32)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0
    again = dalle2(["a red circle", "a blue square on the left"], cond_scale=2.0, prior_cond_scale=1.5,
                   steps=3, prior_steps=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, again)
    # token ids work too, and PIL output has the final size
    tokens = prior.clip.tokenize(["a red circle"])
    pil = dalle2(tokens, steps=2, prior_steps=2, sampler="ddim", return_pil_images=True)
    assert len(pil) == 1 and pil[0].size == (32, 32) and pil[0].mode == "RGB"
    with pytest.raises(ValueError, match="token ids"):
        dalle2(42)


def test_decoder_takes_embeddings_from_its_clip(decoder):
    images, text = torch.rand(2, 3, 32, 32), ["a red circle", "a green triangle"]
    for n in (1, 2):
        loss = decoder(images, text=text, unet_number=n)
        assert torch.isfinite(loss) and loss.item() > 0
    assert not any(p.requires_grad for p in decoder.clip.parameters())
    decoder.train()
    assert decoder.unets.training and not decoder.clip.training
    decoder.eval()
    with pytest.raises(ValueError, match="conditioned on text"):
        decoder(images, unet_number=1)


@pytest.fixture(scope="module")
def pipeline(prior, decoder):
    return UnclipPipeline(prior=prior, decoder=decoder).eval()


def count_text_tower_calls(monkeypatch, clip_adapter):
    calls = []
    original = type(clip_adapter)._embed_tokens
    monkeypatch.setattr(type(clip_adapter), "_embed_tokens", lambda self, tokens: calls.append(len(tokens)) or original(self, tokens))
    return calls


def test_generate_runs_the_text_tower_once_and_equals_the_modules_chained(pipeline, prior, decoder, monkeypatch):
    s = pipeline.resolve(steps=3, prior_steps=4, cond_scale=2.0, sampler="ddim")
    calls = count_text_tower_calls(monkeypatch, prior.clip)
    texts = ["a red circle", "a blue square"]
    images = pipeline.generate(texts, s, generator=[torch.Generator().manual_seed(i) for i in range(2)])
    assert calls == [2]  # one forward of the CLIP text tower for the whole batch
    # the same as the prior and the decoder called one after the other (which embed the text twice)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    embeds = prior.sample(texts, num_samples_per_batch=2, steps=4, sampler="ddim", generator=generators)
    direct = decoder.sample(embeds, text=texts, steps=3, cond_scale=2.0, sampler="ddim", generator=generators)
    torch.testing.assert_close(images, direct, rtol=0, atol=1e-6)


def test_image_variations_decode_each_images_embedding(pipeline, decoder):
    images = torch.rand(2, 3, 64, 64)  # bigger than the CLIP's 32 px: the adapter resizes
    s = pipeline.resolve(steps=2)
    out = pipeline.variations(images, s, num_variations=2, prompts=["a", "b", "c", "d"],
                              generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 32, 32)
    # rows 0-1 come from image 0, rows 2-3 from image 1: different noise, same embedding
    assert not torch.equal(out[0], out[1])
    embeds = decoder.clip.embed_image(images).image_embed.repeat_interleave(2, dim=0)
    direct = decoder.sample(embeds, steps=2, text=["a", "b", "c", "d"], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, direct)


def test_variations_without_a_prompt_use_the_decoders_learned_null_text(pipeline, decoder):
    # the unet's null text: all-padding encodings give exactly what dropping the text gives
    unet = decoder.unets[0]
    x, t, embed = torch.randn(2, 3, 16, 16), torch.tensor([3, 7]), l2norm(torch.randn(2, LATENT))
    padded = unet(x, t, image_embed=embed, text_encodings=torch.zeros(2, 1, LATENT), text_mask=torch.zeros(2, 1, dtype=torch.bool))
    dropped = unet(x, t, image_embed=embed, text_encodings=torch.randn(2, 5, LATENT), text_cond_drop_mask=torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(padded, dropped, rtol=0, atol=0)
    images = torch.rand(1, 3, 32, 32)
    s = pipeline.resolve(steps=2, cond_scale=3.0)
    plain = pipeline.variations(images, s, generator=torch.Generator().manual_seed(1))
    steered = pipeline.variations(images, s, prompts="a green triangle", generator=torch.Generator().manual_seed(1))
    assert plain.shape == (1, 3, 32, 32) and torch.isfinite(plain).all()
    assert (plain - steered).abs().max() > 1e-3  # an optional prompt steers them


def test_non_finite_stages_are_refused_naming_the_stage(pipeline):
    s = pipeline.resolve(steps=2, prior_steps=2, cond_scale=1e30)
    with pytest.raises(NonFiniteOutputError, match="unet 1 stage produced NaN or infinite values; guidance scale 1e.30"):
        pipeline.generate(["a red circle"], s, generator=torch.Generator().manual_seed(0))


def test_slerp_stays_on_the_sphere_at_constant_speed():
    a, b = l2norm(torch.randn(3, 8)), l2norm(torch.randn(3, 8))
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    angle = torch.arccos((a * b).sum(-1))
    for t in (0.25, 0.5, 0.8):
        mid = slerp(a, b, t)
        torch.testing.assert_close(mid.norm(dim=-1), torch.ones(3))
        torch.testing.assert_close(torch.arccos((a * mid).sum(-1).clamp(-1, 1)), t * angle, atol=1e-4, rtol=1e-4)
    # a 90-degree pair: the midpoint is the normalised sum
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(slerp(x, y, 0.5), torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))
    # identical ends fall back to lerp, no NaN
    same = slerp(a, a, 0.3)
    assert torch.isfinite(same).all()
    torch.testing.assert_close(same, a)
    near_b = l2norm(a + 1e-5 * torch.randn(3, 8))
    torch.testing.assert_close(slerp(a, near_b, 0.5), l2norm(a + near_b))
    # t per row
    torch.testing.assert_close(slerp(a, b, torch.tensor([0.0, 1.0, 0.0])), torch.stack([a[0], b[1], a[2]]))


def test_interpolate_renders_frames_from_the_same_noise(pipeline, prior, monkeypatch):
    s = pipeline.resolve(steps=2, prior_steps=3)
    image_end = torch.rand(1, 3, 32, 32)
    calls = count_text_tower_calls(monkeypatch, prior.clip)
    frames = pipeline.interpolate(["a red circle", image_end], 3, s, seed=4, batch_size=2)
    assert calls == [1] and frames.shape == (3, 3, 32, 32)
    # the prompt end alone: its prior embedding and its text, both drawn with a generator seeded 4
    text = pipeline.encode_text(["a red circle"])
    embed = l2norm(pipeline.sample_prior(text, s, generator=torch.Generator().manual_seed(4)))  # slerp's ends are unit vectors
    torch.testing.assert_close(frames[0], pipeline.decode(embed, text, s, generator=torch.Generator().manual_seed(4))[0])
    # the image end: its CLIP embedding and the decoder's null text, from the same noise
    last = pipeline.variations(image_end, s, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(frames[-1], last[0])
    assert (frames[1] - frames[0]).abs().max() > 0
    with pytest.raises(ValueError, match="num_frames"):
        pipeline.interpolate(["a", "b"], 1, s)


def test_latent_stage_trains_the_unet_not_the_vae():
    torch.manual_seed(0)
    vae = VQGanVAE(dim=8, image_size=16, layers=1, layer_mults=(1,), use_vgg_and_gan=False, vq_codebook_size=16,
                   vq_codebook_dim=8, use_attn=False, resnet_groups=4)
    decoder = Decoder(unet=(tiny_unet(image_embed_dim=8), tiny_unet()), vae=(vae,), image_sizes=(16, 32),
                      timesteps=10, image_embed_dim=8)
    assert decoder.unets[0].channels == vae.encoded_dim and decoder.unets[1].channels == 3
    vae_before = {k: v.clone() for k, v in decoder.vaes[0].state_dict().items()}
    loss = decoder(torch.rand(2, 3, 32, 32), image_embed=l2norm(torch.randn(2, 8)), unet_number=1)
    loss.backward()
    assert all(p.grad is None for p in decoder.vaes.parameters())
    assert any(p.grad is not None for p in decoder.unets[0].parameters())
    assert all(torch.equal(vae_before[k], v) for k, v in decoder.vaes[0].state_dict().items())
    out = decoder.eval().sample(l2norm(torch.randn(2, 8)), steps=2)
    assert out.shape == (2, 3, 32, 32)
    low = decoder.sample(l2norm(torch.randn(2, 8)), steps=2, stop_at_unet_number=1)
    assert low.shape == (2, 3, 16, 16)
    known, mask = torch.rand(2, 3, 32, 32), torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[:, 10:20, 5:25] = True
    painted = decoder.sample(l2norm(torch.randn(2, 8)), steps=2, inpaint_image=known, inpaint_mask=mask,
                             inpaint_resample_times=2)
    assert torch.equal(painted[:, :, 10:20, 5:25], known[:, :, 10:20, 5:25])
    rebuilt = Decoder.from_config(decoder.config.to_dict())
    rebuilt.load_state_dict(decoder.state_dict())
    torch.testing.assert_close(rebuilt.vaes[0].encode(known * 2 - 1), decoder.vaes[0].encode(known * 2 - 1))
