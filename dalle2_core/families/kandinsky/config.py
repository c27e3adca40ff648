"""diffusers configs of Kandinsky 2.2's components (kandinsky-community/kandinsky-2-2-{prior,decoder,decoder-inpaint}) as ours.

One function per diffusers class, as `convert.diffusers_config` does for Karlo (whose prior and U-Net readers
these reuse): every option is carried over or accepted only at the values implemented here, anything else is
refused in one line; absent options take diffusers' defaults.
"""

from __future__ import annotations

import dataclasses

from dalle2_core.adm import AdmUnetConfig
from dalle2_core.convert import diffusers_config as dc
from dalle2_core.diffusion import DiffusionConfig
from dalle2_core.families.kandinsky.decoder import KandinskyDecoderConfig
from dalle2_core.families.kandinsky.defaults import DECODER_STEPS, PRIOR_STEPS
from dalle2_core.movq import MoVQConfig
from dalle2_core.prior.standardized_prior import StandardizedPriorConfig

ANY = dc.ANY
# diffusers' ImageProjection makes this many context tokens (not a UNet2DConditionModel option)
IMAGE_TOKENS = 32
# UNet2DConditionModel options Kandinsky 2.2 adds to Karlo's decoder: what the U-Net reads instead of text
UNET_IMAGE_OPTIONS = dict(
    encoder_hid_dim=(None, ANY), encoder_hid_dim_type=(None, ("image_proj",)), addition_embed_type=(None, ("image",))
)
MOVQ_OPTIONS = dict(
    in_channels=(3, ANY), out_channels=(3, ANY), down_block_types=(("DownEncoderBlock2D",), ANY),
    up_block_types=(("UpDecoderBlock2D",), ANY),
    block_out_channels=((64,), ANY), layers_per_block=(1, ANY), act_fn=("silu", ("silu",)), latent_channels=(3, ANY),
    sample_size=(32, ANY),  # training resolution: no effect on the network
    num_vq_embeddings=(256, ANY), norm_num_groups=(32, ANY), vq_embed_dim=(None, ANY),
    scaling_factor=(0.18215, ANY),  # Kandinsky's pipelines never scale MoVQ latents
    norm_type=("group", ("spatial",)), mid_block_add_attention=(True, (True,)), lookup_from_codebook=(False, (False,)),
    force_upcast=(False, ANY),  # a float16 runtime hint
)
MOVQ_DOWN_BLOCKS = {"DownEncoderBlock2D": (False, "UpDecoderBlock2D"), "AttnDownEncoderBlock2D": (True, "AttnUpDecoderBlock2D")}
DDPM_OPTIONS = dict(
    num_train_timesteps=(1000, ANY), beta_start=(0.0001, ANY), beta_end=(0.02, ANY), beta_schedule=("linear", ("linear",)),
    trained_betas=(None, (None,)), variance_type=("fixed_small", ("fixed_small", "fixed_small_log")), clip_sample=(True, (True, False)),
    clip_sample_range=(1.0, ANY), prediction_type=("epsilon", ("epsilon",)), thresholding=(False, (False,)),
    dynamic_thresholding_ratio=(0.995, ANY), sample_max_value=(1.0, ANY),  # used only with thresholding
    timestep_spacing=("leading", ("leading",)), steps_offset=(0, ANY), rescale_betas_zero_snr=(False, (False,)),
    set_alpha_to_one=(None, ANY),  # a DDIMScheduler option that DDPMScheduler ignores (Kandinsky's config has it)
)


def _class(config: dict, accepted: tuple[str, ...], what: str) -> None:
    name = config.get("_class_name")
    if name is not None and name not in accepted:
        raise ValueError(f"{what}: a {name} config; expected {' or '.join(accepted)}")


def prior_config(prior: dict, scheduler: dict) -> StandardizedPriorConfig:
    """The prior component: `prior/config.json` and `scheduler/scheduler_config.json` (an UnCLIPScheduler)."""
    _class(prior, ("PriorTransformer",), "prior")
    _class(scheduler, ("UnCLIPScheduler",), "prior scheduler")
    config = dc.standardized_prior_config(prior, scheduler)
    return dataclasses.replace(config, diffusion=dataclasses.replace(config.diffusion, sample_steps=PRIOR_STEPS))


def unet_config(config: dict, what: str = "unet (UNet2DConditionModel)") -> AdmUnetConfig:
    """Kandinsky's U-Net: Karlo's decoder blocks, conditioned on an image embedding (image_proj context, image time embedding)."""
    _class(config, ("UNet2DConditionModel",), what)
    image = dc._options({k: config[k] for k in UNET_IMAGE_OPTIONS if k in config}, UNET_IMAGE_OPTIONS, what)
    kinds = (image["encoder_hid_dim_type"], image["addition_embed_type"])
    if kinds != ("image_proj", "image") or not isinstance(image["encoder_hid_dim"], int):
        raise ValueError(
            f"{what}: encoder_hid_dim_type={image['encoder_hid_dim_type']!r}, addition_embed_type={image['addition_embed_type']!r}, "
            f"encoder_hid_dim={image['encoder_hid_dim']!r} is not Kandinsky 2.2's U-Net; accepted: 'image_proj', 'image' and an int"
        )
    unet = dc.unet2d_condition_config({k: v for k, v in config.items() if k not in UNET_IMAGE_OPTIONS}, what)
    conditioning = dataclasses.replace(unet.conditioning, image_embed_dim=image["encoder_hid_dim"], image_tokens=IMAGE_TOKENS)
    return dataclasses.replace(unet, conditioning=conditioning)


def movq_config(config: dict, what: str = "movq (VQModel)") -> MoVQConfig:
    _class(config, ("VQModel",), what)
    o = dc._options(config, MOVQ_OPTIONS, what)
    down, up, widths = o["down_block_types"], o["up_block_types"], o["block_out_channels"]
    if not isinstance(down, tuple) or not isinstance(up, tuple) or len(down) != len(widths) or len(up) != len(down):
        raise ValueError(f"{what}: down_block_types and up_block_types need one entry per block_out_channels entry")
    bad = [b for b in down if b not in MOVQ_DOWN_BLOCKS]
    if bad:
        raise ValueError(f"{what}: down block type(s) {', '.join(bad)} not supported; accepted: {', '.join(MOVQ_DOWN_BLOCKS)}")
    mirrored = tuple(MOVQ_DOWN_BLOCKS[b][1] for b in reversed(down))
    if up != mirrored:
        raise ValueError(f"{what}: up_block_types {list(up)} do not mirror down_block_types; expected {list(mirrored)}")
    if o["vq_embed_dim"] not in (None, o["latent_channels"]):
        raise ValueError(f"{what}: vq_embed_dim={o['vq_embed_dim']} is not supported; accepted: latent_channels ({o['latent_channels']})")
    return MoVQConfig(
        in_channels=o["in_channels"], out_channels=o["out_channels"], latent_channels=o["latent_channels"], widths=widths,
        layers_per_block=o["layers_per_block"], attention=tuple(MOVQ_DOWN_BLOCKS[b][0] for b in down), norm_groups=o["norm_num_groups"],
        codebook_size=o["num_vq_embeddings"],
    )


def ddpm_options(config: dict, what: str = "scheduler (DDPMScheduler)") -> dict:
    """The DDPMScheduler config as `KandinskyDecoderConfig` keywords (diffusion, beta_start, beta_end, steps_offset)."""
    _class(config, ("DDPMScheduler",), what)
    o = dc._options(config, DDPM_OPTIONS, what)
    diffusion = DiffusionConfig(
        timesteps=o["num_train_timesteps"], beta_schedule="linear", float32_schedule=True,
        posterior_log_variance="unclipped", x0_clamp=float(o["clip_sample_range"]) if o["clip_sample"] else None,
        sample_steps=DECODER_STEPS,
    )
    return dict(diffusion=diffusion, beta_start=float(o["beta_start"]), beta_end=float(o["beta_end"]), steps_offset=o["steps_offset"])


def decoder_config(unet: dict, movq: dict, scheduler: dict) -> KandinskyDecoderConfig:
    """The decoder component from `unet/config.json`, `movq/config.json` and `scheduler/scheduler_config.json`."""
    return KandinskyDecoderConfig(unet=unet_config(unet), movq=movq_config(movq), **ddpm_options(scheduler))


__all__ = ["ddpm_options", "decoder_config", "movq_config", "prior_config", "unet_config"]
