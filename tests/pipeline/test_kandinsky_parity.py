"""Kandinsky 2.2's networks against diffusers 0.42.1 / transformers 5.25, read by our converter from folders they wrote.

The references are their outputs on a tiny random Kandinsky (tests/fixtures/kandinsky/make_fixtures.py); neither
library is needed here. Tolerance 1e-5: float32 rounding of the same operations in another order.
"""

import pytest
import torch
from fixtures.kandinsky import loader as kf

R = kf.reference()
TOLERANCE = 1e-5


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert (ours.float() - theirs.float()).abs().max() < TOLERANCE


@pytest.fixture(scope="module")
def decoder():
    return kf.decoder()


@torch.no_grad()
def test_prior_transformer_matches_diffusers():
    prior = kf.prior()
    out = prior.net(R["prior.x"], R["prior.t"], text_embed=R["prior.text_embed"], text_encodings=R["prior.text_states"],
                    text_mask=R["prior.text_mask"])
    assert R["prior.out"].abs().max() > 0.1
    close(out, R["prior.out"])
    assert prior.config.diffusion.x0_clamp == 10.0 and prior.config.diffusion.objective == "x0"  # clip_sample_range 10


@torch.no_grad()
def test_text_tower_matches_transformers_on_tokens_padded_with_end_of_text():
    tokens = R["text.input_ids"]
    assert (tokens[:, -1] == 49407).all()  # padded with <|endoftext|>, not "!"
    text = kf.text_tower().embed_text(tokens)
    assert R["text.text_embeds"].abs().max() > 0.05
    close(text.text_embed, R["text.text_embeds"])  # the raw projection (no l2 normalisation)
    close(text.text_encodings, R["text.last_hidden_state"])  # all 77 states, padding included
    assert torch.equal(text.text_mask, R["text.attention_mask"])  # up to and including the first end-of-text token


@torch.no_grad()
def test_vision_tower_stays_float16_and_matches_transformers():
    tower, _ = kf.vision_tower()
    assert {p.dtype for p in tower.parameters()} == {torch.float16}  # as stored
    image_embed = tower.float().encode_pixel_values(R["vision.pixel_values"].float()).image_embed
    assert R["vision.image_embeds"].abs().max() > 0.05
    close(image_embed, R["vision.image_embeds"])


def test_zero_image_embedding_is_get_zero_embed():
    _, zero = kf.vision_tower()
    assert zero.dtype == torch.float32 and zero.shape == (8,)
    close(zero, R["zero_image_embed"][0])
    # the prior pipeline's negative embedding without a negative prompt is that constant
    close(R["prior_run.negative_image_embeds"], R["zero_image_embed"].expand(2, -1))


@torch.no_grad()
@pytest.mark.parametrize("name,folder", [("unet", kf.DECODER), ("inpaint_unet", kf.INPAINT)])
def test_unets_match_diffusers(name, folder):
    unet = kf.unet(folder)
    out = unet(R[f"{name}.x"], R[f"{name}.t"], image_embed=R["unet.image_embeds"])
    assert R[f"{name}.out"].abs().max() > 0.1
    close(out, R[f"{name}.out"])


@torch.no_grad()
def test_unet_context_encoded_once_gives_the_same_output():
    unet = kf.unet()
    kwargs = unet.encode_context(image_embed=R["unet.image_embeds"])
    assert torch.equal(unet(R["unet.x"], R["unet.t"], **kwargs), unet(R["unet.x"], R["unet.t"], image_embed=R["unet.image_embeds"]))


@torch.no_grad()
def test_decoder_model_function_drops_the_variance_channels(decoder):
    eps = decoder(R["unet.x"], R["unet.t"], image_embed=R["unet.image_embeds"])
    close(eps, R["unet.out"][:, :4])


@torch.no_grad()
def test_movq_encode_decode_and_quantize_match_diffusers(decoder):
    movq = decoder.movq
    assert R["movq.latents"].abs().max() > 0.01
    close(movq.encode(R["movq.image"]), R["movq.latents"])  # no quantisation on the way in
    latents = R["movq.decode_input"]
    assert R["movq.decoded"].std() > 0.1
    close(movq.decode(latents), R["movq.decoded"])  # force_not_quantize=True
    quantized, indices = movq.quantize(latents)
    assert indices.shape == (2, 8, 12) and indices.unique().numel() > 3
    close(movq.decode(quantized), R["movq.quantized_decoded"])


@torch.no_grad()
def test_decoder_maps_pictures_in_zero_one(decoder):
    pictures = (R["movq.image"] + 1) / 2
    close(decoder.encode(pictures), R["movq.latents"])
    images = decoder.decode(R["movq.decode_input"])
    close(images, (R["movq.decoded"] * 0.5 + 0.5).clamp(0, 1))  # what KandinskyV22Pipeline returns for "np" / "pil"
