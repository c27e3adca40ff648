"""The DALLE2-pytorch README's DecoderTrainer example (`dalle2_pytorch` -> `dalle2_core`, `.cuda()` dropped).

The sampling is shortened: the README's decoder samples all 1000 timesteps per unet, which on a
CPU takes far longer than a test may; `sample_timesteps=2` respaces that schedule. The README's
image sizes (128, 256) with 4 images take about 3 minutes on 2 cores, so that variant runs when
DREAM_SLOW_TESTS=1 (the `slow` marker); every run does the same code at (16, 32) px with 1 image.
"""


import pytest
import torch
from test_decoder_spec_examples import spec_clip

from dalle2_core import Decoder, DecoderTrainer, Unet


def decoder_trainer_example(image_sizes, batch):
    torch.manual_seed(0)
    clip = spec_clip(depth=6)  # the README's CLIP(dim_text=512, ..., visual_heads=8)

    # mock data

    text = torch.randint(0, 49408, (batch, 256))
    images = torch.randn(batch, 3, image_sizes[1], image_sizes[1])

    # decoder (with unet)

    unet1 = Unet(dim=128, image_embed_dim=512, text_embed_dim=512, cond_dim=128, channels=3, dim_mults=(1, 2, 4, 8))

    unet2 = Unet(
        dim=16,
        image_embed_dim=512,
        text_embed_dim=512,
        cond_dim=128,
        channels=3,
        dim_mults=(1, 2, 4, 8, 16),
        cond_on_text_encodings=True,
    )

    decoder = Decoder(
        unet=(unet1, unet2),
        image_sizes=image_sizes,
        clip=clip,
        timesteps=1000,
        sample_timesteps=2,  # not in the README: see the module docstring
        condition_on_text_encodings=True,
    )

    decoder_trainer = DecoderTrainer(
        decoder,
        lr=3e-4,
        wd=1e-2,
        ema_beta=0.99,
        ema_update_after_step=1000,
        ema_update_every=10,
    )

    before = [u.to_out.weight.clone() for u in decoder.unets]
    for unet_number in (1, 2):
        loss = decoder_trainer(images, text=text, unet_number=unet_number)  # use the decoder_trainer forward
        loss.backward()

        decoder_trainer.update(unet_number)  # update the specific unet as well as its exponential moving average

    assert all(not torch.equal(b, u.to_out.weight) for b, u in zip(before, decoder.unets))
    assert [decoder_trainer.num_steps_taken(i) for i in (0, 1)] == [1, 1]
    # before ema_update_after_step the EMA copies follow the trained weights exactly
    for ema, unet in zip(decoder_trainer.ema_unets, decoder.unets):
        assert all(torch.equal(e, w) for e, w in zip(ema.state_dict().values(), unet.state_dict().values()))

    # after much training
    # you can sample from the exponentially moving averaged unets as so

    mock_image_embed = torch.randn(batch, 512)
    images = decoder_trainer.sample(mock_image_embed, text=text)  # (4, 3, 256, 256)
    assert images.shape == (batch, 3, image_sizes[1], image_sizes[1])
    assert torch.isfinite(images).all()


def test_readme_decoder_trainer_example_small():
    decoder_trainer_example((16, 32), 1)


@pytest.mark.slow  # about 3 minutes on 2 CPU cores
def test_readme_decoder_trainer_example_as_written():
    decoder_trainer_example((128, 256), 4)
