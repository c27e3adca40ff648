"""The DALLE2-pytorch README's decoder, cascade, latent-diffusion and whole-script examples.

`dalle2_pytorch` -> `dalle2_core`, `.cuda()` dropped. Each example is one function whose image
sizes (and mock batch) are parameters. The `*_small` variants run the same code at smaller
resolutions and batches on every test run. `*_as_written` runs the README's numbers exactly
(sampling timesteps reduced where the README samples); measured on the 2-core CPU machine with
gradient checkpointing on (automatic at these sizes): decoder 300 s / 7.5 GB peak, cascade 155 s /
7.5 GB, latent diffusion at 1024 px 266 s / 7.8 GB, whole script 174 s / 7.4 GB. Together that is
longer than the suite may take, so they are marked `slow` (run with DREAM_SLOW_TESTS=1, and enough RAM free).
"""


import pytest
import torch

from dalle2_core import CLIP, DALLE2, Decoder, DiffusionPrior, DiffusionPriorNetwork, Unet, VQGanVAE


def available_ram_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) / 2**20
    except (OSError, KeyError, ValueError):
        return 0.0


def needs_ram(gb: int):
    return pytest.mark.skipif(available_ram_gb() < gb, reason=f"the README's sizes need about {gb} GB of free RAM on CPU")


def spec_clip(depth, image_size=256):
    """The README's CLIP (its examples use depth 6 or 1, and 256 px)."""
    return CLIP(
        dim_text=512,
        dim_image=512,
        dim_latent=512,
        num_text_tokens=49408,
        text_enc_depth=depth,
        text_seq_len=256,
        text_heads=8,
        visual_enc_depth=depth,
        visual_image_size=image_size,
        visual_patch_size=32,
        visual_heads=8,
    )


def assert_only_the_heads_learned(decoder, unet_numbers):
    """A fresh Unet's head is zero, so a first backward pass reaches nothing behind it: every other weight's
    gradient is exactly 0, the head's is not (the zero-initialised head of ADM, Nichol & Dhariwal 2021)."""
    for n in unet_numbers:
        unet = decoder.get_unet(n)
        head = {id(unet.to_out.weight), id(unet.to_out.bias)}
        behind = [p.grad for p in unet.parameters() if id(p) not in head and p.grad is not None]
        assert behind and max(g.abs().max().item() for g in behind) == 0.0, f"unet {n}"
        assert unet.to_out.weight.grad.abs().sum() > 0 and unet.to_out.bias.grad.abs().sum() > 0, f"unet {n}"


def decoder_example(image_size, batch):
    torch.manual_seed(0)
    clip = spec_clip(1, image_size)
    unet = Unet(dim=128, image_embed_dim=512, cond_dim=128, channels=3, dim_mults=(1, 2, 4, 8))
    decoder = Decoder(unet=unet, clip=clip, timesteps=100, image_cond_drop_prob=0.1, text_cond_drop_prob=0.5)

    images = torch.randn(batch, 3, image_size, image_size)
    loss = decoder(images)
    loss.backward()

    assert decoder.image_sizes == (image_size,)  # taken from the CLIP
    assert torch.isfinite(loss) and loss.item() > 0
    assert_only_the_heads_learned(decoder, (1,))


def cascade_example(image_sizes, batch):
    torch.manual_seed(0)
    clip = spec_clip(6, image_sizes[0])
    unet1 = Unet(dim=32, image_embed_dim=512, cond_dim=128, channels=3, dim_mults=(1, 2, 4, 8))
    unet2 = Unet(dim=32, image_embed_dim=512, cond_dim=128, channels=3, dim_mults=(1, 2, 4, 8, 16))
    decoder = Decoder(
        clip=clip,
        unet=(unet1, unet2),
        image_sizes=image_sizes,
        timesteps=1000,
        image_cond_drop_prob=0.1,
        text_cond_drop_prob=0.5,
    )

    images = torch.randn(batch, 3, image_sizes[1], image_sizes[1])
    loss1 = decoder(images, unet_number=1)
    loss1.backward()
    loss2 = decoder(images, unet_number=2)
    loss2.backward()

    assert torch.isfinite(loss1) and torch.isfinite(loss2)
    assert decoder.unets[1].lowres_cond and not decoder.unets[0].lowres_cond
    assert_only_the_heads_learned(decoder, (1, 2))


def latent_example(image_sizes):
    torch.manual_seed(0)
    clip = spec_clip(1, image_sizes[0])
    vae1 = VQGanVAE(dim=32, image_size=image_sizes[0], layers=3, layer_mults=(1, 2, 4))
    vae2 = VQGanVAE(dim=32, image_size=image_sizes[1], layers=3, layer_mults=(1, 2, 4))
    unet1 = Unet(dim=32, image_embed_dim=512, cond_dim=128, channels=3, sparse_attn=True, sparse_attn_window=2,
                 dim_mults=(1, 2, 4, 8))
    unet2 = Unet(dim=32, image_embed_dim=512, channels=3, dim_mults=(1, 2, 4, 8, 16), cond_on_image_embeds=True,
                 cond_on_text_encodings=False)
    unet3 = Unet(dim=32, image_embed_dim=512, channels=3, dim_mults=(1, 2, 4, 8, 16), cond_on_image_embeds=True,
                 cond_on_text_encodings=False, attend_at_middle=False)
    decoder = Decoder(
        clip=clip,
        vae=(vae1, vae2),
        unet=(unet1, unet2, unet3),
        image_sizes=image_sizes,
        timesteps=2,  # README: 100; reduced so that sampling on CPU stays short
        image_cond_drop_prob=0.1,
        text_cond_drop_prob=0.5,
    )

    images = torch.randn(1, 3, image_sizes[2], image_sizes[2])
    for n in (1, 2, 3):
        with decoder.one_unet_in_gpu(n):
            loss = decoder(images, unet_number=n)
            loss.backward()
        assert torch.isfinite(loss)
    assert decoder.unets[0].channels == vae1.encoded_dim and decoder.unets[2].channels == 3
    assert_only_the_heads_learned(decoder, (1, 2, 3))
    assert all(p.grad is None for p in decoder.vaes.parameters())  # the VQ-GANs are frozen

    mock_image_embed = torch.randn(1, 512)
    images = decoder.sample(mock_image_embed)
    assert images.shape == (1, 3, image_sizes[2], image_sizes[2])
    assert images.min() >= 0 and images.max() <= 1


def whole_script(clip_size, image_sizes, batch):
    torch.manual_seed(0)
    clip = spec_clip(6, clip_size)

    text = torch.randint(0, 49408, (batch, 256))
    images = torch.randn(batch, 3, clip_size, clip_size)
    loss = clip(text, images, return_loss=True)
    loss.backward()

    prior_network = DiffusionPriorNetwork(dim=512, depth=6, dim_head=64, heads=8)
    diffusion_prior = DiffusionPrior(net=prior_network, clip=clip, timesteps=4, cond_drop_prob=0.2)  # README: 100
    loss = diffusion_prior(text, images)
    loss.backward()

    unet1 = Unet(dim=128, image_embed_dim=512, cond_dim=128, channels=3, dim_mults=(1, 2, 4, 8))
    unet2 = Unet(dim=16, image_embed_dim=512, cond_dim=128, channels=3, dim_mults=(1, 2, 4, 8, 16))
    decoder = Decoder(
        unet=(unet1, unet2),
        image_sizes=image_sizes,
        clip=clip,
        timesteps=4,  # README: 100
        image_cond_drop_prob=0.1,
        text_cond_drop_prob=0.5,
        condition_on_text_encodings=False,
    )
    for unet_number in (1, 2):
        loss = decoder(images, unet_number=unet_number)
        loss.backward()
        assert torch.isfinite(loss)
    assert_only_the_heads_learned(decoder, (1, 2))

    dalle2 = DALLE2(prior=diffusion_prior, decoder=decoder)
    images = dalle2(["cute puppy chasing after a squirrel"], cond_scale=2.0)
    assert images.shape == (1, 3, image_sizes[1], image_sizes[1])
    assert images.min() >= 0 and images.max() <= 1


def test_readme_decoder_example_small():
    decoder_example(32, 2)  # the CLIP's 32 px patch: one patch


def test_readme_cascade_example_small():
    cascade_example((32, 64), 1)


def test_readme_latent_diffusion_example_small():
    # the smallest sizes the README's networks take: the latent base unet needs >= 16 px latents for its
    # 2x2 windows, the second latent stage a latent divisible by 16, the pixel stage a size divisible by 16
    latent_example((128, 256, 272))


def test_readme_whole_script_small():
    whole_script(64, (16, 32), 1)


@pytest.mark.slow  # 3-5 minutes each on 2 CPU cores
@needs_ram(10)
def test_readme_decoder_example_as_written():
    decoder_example(256, 4)


@pytest.mark.slow  # 3-5 minutes each on 2 CPU cores
@needs_ram(10)
def test_readme_cascade_example_as_written():
    cascade_example((256, 512), 4)


@pytest.mark.slow  # 3-5 minutes each on 2 CPU cores
@needs_ram(10)
def test_readme_latent_diffusion_example_as_written():
    latent_example((256, 512, 1024))


@pytest.mark.slow  # 3-5 minutes each on 2 CPU cores
@needs_ram(10)
def test_readme_whole_script_as_written():
    whole_script(256, (128, 256), 4)
