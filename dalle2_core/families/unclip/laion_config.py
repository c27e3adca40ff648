"""LAION's train-config JSON (DALLE2-pytorch 1.0-1.1 train configs) as this project's configs.

Each option is either carried over, set to the value that reproduces 1.1.0's behaviour (the era's
numerics are options of this project's modules), or refused with an error naming it. Values that
1.1.0 accepted but never used are noted, not silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dalle2_core.clip.open_clip_adapter import openai_to_open_clip_name
from dalle2_core.decoder.unet_config import UnetConfig
from dalle2_core.helpers import exists
from dalle2_core.prior.network import DiffusionPriorNetworkConfig
from dalle2_core.prior.prior import DiffusionPriorConfig

# 1.1.0's own defaults: pydantic writes None for options left unset, which means these
PRIOR_NET_DEFAULTS = dict(
    num_timesteps=None, max_text_len=256, num_time_embeds=1, num_image_embeds=1, num_text_embeds=1, dim_head=64,
    heads=8, ff_mult=4, norm_in=False, norm_out=True, attn_dropout=0.0, ff_dropout=0.0, final_proj=True,
    normformer=False, rotary_emb=True,
)
PRIOR_DEFAULTS = dict(
    image_size=None, image_channels=3, timesteps=1000, sample_timesteps=None, cond_drop_prob=0.0, loss_type="l2",
    predict_x_start=True, beta_schedule="cosine", condition_on_text_encodings=True, sampling_clamp_l2norm=False,
    sampling_final_clamp_l2norm=False, training_clamp_l2norm=False, image_embed_scale=None,
)
PRIOR_IGNORED = ("clip", "clip_adapter_overrides", "init_image_embed_l2norm")
UNET_DEFAULTS = dict(
    image_embed_dim=None, text_embed_dim=None, cond_dim=None, num_image_tokens=4, num_time_tokens=2,
    dim_mults=(1, 2, 4, 8), channels=3, self_attn=False, attn_dim_head=32, attn_heads=16, sparse_attn=False,
    cond_on_text_encodings=False, max_text_len=256, add_image_embeds_to_time=True, init_dim=None,
    init_conv_kernel_size=7, resnet_groups=8, num_resnet_blocks=2, init_cross_embed=True,
    init_cross_embed_kernel_sizes=(3, 7, 15), cross_embed_downsample=False, cross_embed_downsample_kernel_sizes=(2, 4),
    memory_efficient=False, scale_skip_connection=False, pixel_shuffle_upsample=True, final_conv_kernel_size=1,
)
# set by the decoder for each stage (1.1.0 recast every unet the same way), or unused by 1.1.0
UNET_STAGE_SET = ("lowres_cond", "lowres_noise_cond", "cond_on_image_embeds", "channels_out", "out_dim", "attend_at_middle")
# how 1.1.0 computed what this project makes configurable
UNET_ERA = dict(
    downsample_mode="conv",  # stride-2 4x4 conv (1.10+: pixel-unshuffle + 1x1)
    linear_attn_normalize_v=False,  # no l2norm of v (1.4+)
    sparse_attn_window=None,  # sparse_attn meant linear attention
    attend_at_middle=True,  # 1.1.0 always built the middle attention, whatever the option said
    cross_attn_heads=8,
    cross_attn_dim_head=64,
    block_type="resnet",
)
DECODER_DEFAULTS = dict(
    channels=3, timesteps=1000, sample_timesteps=None, loss_type="l2", beta_schedule=None, learned_variance=True,
    image_cond_drop_prob=0.1, text_cond_drop_prob=0.5, predict_x_start=False, use_noise_for_lowres_cond=False,
    use_blur_for_lowres_cond=True, lowres_downsample_first=True, blur_prob=0.5, blur_sigma=0.6, blur_kernel_size=3,
    lowres_noise_sample_level=0.2, clip_denoised=True, learned_variance_constrain_frac=False, vb_loss_weight=0.001,
    unconditional=False, use_dynamic_thres=False, dynamic_thres_percentile=0.95, p2_loss_weight_gamma=0.0,
    p2_loss_weight_k=1.0, ddim_sampling_eta=1.0,
)
# training-only options of 1.1.0's Decoder, accepted and not needed for sampling
DECODER_IGNORED = ("clip", "random_crop_sizes", "clip_x_start", "clip_adapter_overrides", "image_size", "image_sizes", "unets")
# options this importer supports with one value only: (accepted values, what that means)
DECODER_REQUIRED = dict(
    vae=((None, [], ()), "pixel-space stages (no VQ-GAN)"),
    predict_x_start_for_latent_diffusion=((None, False), "False"),
    auto_normalize_img=((None, True), "True (images in [0, 1])"),
)


@dataclass
class Notes:
    """What a conversion changed or could not carry over, in words (saved beside the model)."""

    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        if line not in self.lines:
            self.lines.append(line)


def _section(config: dict, key: str, what: str) -> dict:
    """`config[key]` for a whole train config, else `config` itself (a bare section)."""
    if not isinstance(config, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(config).__name__}")
    section = config.get(key, config)
    if not isinstance(section, dict):
        raise ValueError(f"{what}: '{key}' must be an object, got {type(section).__name__}")
    return section


def _options(section: dict, defaults: dict, ignored, what: str) -> dict:
    unknown = sorted(set(section) - set(defaults) - set(ignored))
    if unknown:
        raise ValueError(
            f"{what} has option(s) {', '.join(map(repr, unknown))} that DALLE2-pytorch 1.1.0 did not have or this "
            f"importer cannot reproduce; accepted: {', '.join(sorted(set(defaults) | set(ignored)))}"
        )
    return {k: (section[k] if exists(section.get(k)) else v) for k, v in defaults.items()}


def clip_name(config: dict) -> tuple[str, str]:
    """(open_clip model name, pretrained tag) of the CLIP a LAION config names (OpenAI ViT-L/14 if none)."""
    clip = config.get("clip") if isinstance(config, dict) else None
    if not isinstance(clip, dict):
        return "ViT-L-14", "openai"
    if clip.get("make", "openai") != "openai":
        raise ValueError(f"the config's CLIP is {clip.get('make')!r}; only OpenAI CLIPs (make 'openai') can be loaded")
    return openai_to_open_clip_name(clip.get("model") or "ViT-L/14"), "openai"


def prior_configs(config: dict, notes: Notes) -> DiffusionPriorConfig:
    """A `prior_config.json` (train config, or its `prior` section) as a `DiffusionPriorConfig`."""
    section = _section(config, "prior", "prior config")
    if not isinstance(section.get("net"), dict) or "image_embed_dim" not in section:
        raise ValueError("prior config needs 'net' (the network options) and 'image_embed_dim' under 'prior'")
    net = dict(section["net"])
    dim, depth = net.pop("dim", None), net.pop("depth", None)
    if not isinstance(dim, int) or not isinstance(depth, int):
        raise ValueError(f"prior config 'net' needs integer dim and depth, got dim={dim!r} depth={depth!r}")
    net = _options(net, PRIOR_NET_DEFAULTS, (), "prior config 'net'")
    opts = _options({k: v for k, v in section.items() if k != "net"}, {**PRIOR_DEFAULTS, "image_embed_dim": None},
                    PRIOR_IGNORED, "prior config")
    if section.get("init_image_embed_l2norm"):
        raise ValueError("prior config sets init_image_embed_l2norm, which this importer does not reproduce")
    network = DiffusionPriorNetworkConfig.build(
        None, owner="DiffusionPriorNetwork", dim=dim, depth=depth,
        pb_relax_alpha=128,  # 1.1.0 logits: q·k/sqrt(d) + 128·bias
        **net,
    )
    if opts["cond_drop_prob"] > 0:
        # 1.1.0 built the dropout mask but never passed it to the transformer: guidance changed nothing
        notes.add(
            f"prior cond_drop_prob {opts['cond_drop_prob']} set to 0: in DALLE2-pytorch 1.1.0 the prior's "
            "conditional dropout was a no-op, so its null condition was never trained (use prior cond_scale 1)"
        )
    opts["cond_drop_prob"] = 0.0
    return DiffusionPriorConfig.build(None, owner="DiffusionPrior", net=network, **opts)


def decoder_section(config: dict, what: str) -> dict:
    section = _section(config, "decoder", what)
    unets = section.get("unets")
    if not isinstance(unets, (list, tuple)) or not unets or not all(isinstance(u, dict) for u in unets):
        raise ValueError(f"{what} needs 'unets', a non-empty list of unet option objects")
    return section


def decoder_options(section: dict, what: str) -> dict:
    """The decoder-level options of a 1.1.0 decoder config, 1.1.0's defaults filled in."""
    for key, (accepted, meaning) in DECODER_REQUIRED.items():
        if key in section and section[key] not in accepted:
            raise ValueError(f"{what} sets {key}={section[key]!r}; this importer supports only {meaning}")
    return _options({k: v for k, v in section.items() if k not in DECODER_REQUIRED}, DECODER_DEFAULTS, DECODER_IGNORED, what)


def image_sizes(section: dict) -> tuple[int, ...]:
    sizes = section.get("image_sizes") or ([section["image_size"]] if exists(section.get("image_size")) else None)
    if not sizes:
        raise ValueError("decoder config needs image_sizes (or image_size)")
    return tuple(sorted(set(int(s) for s in sizes)))  # 1.1.0 sorts and de-duplicates


def _cast(value, n: int) -> tuple:
    """1.1.0's `cast_tuple`: a list as a tuple, a scalar repeated n times."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


def stage_options(opts: dict, index: int, n: int) -> dict:
    """The per-unet options of unet `index` of an `n`-unet 1.1.0 decoder, cast the way 1.1.0 cast them."""
    schedule = opts["beta_schedule"]
    if not exists(schedule):  # 1.1.0's default: cosine, except a linear last stage in a cascade
        schedule = ("cosine",) * max(n - 1, 1) + (("linear",) if n > 1 else ())
    lv = _cast(opts["learned_variance"], 1)
    lv += (False,) * (n - len(lv))  # a bare True means the first unet only
    stage = dict(
        learned_variance=lv,
        beta_schedule=_cast(schedule, n),
        predict_x_start=_cast(opts["predict_x_start"], n),
        p2_loss_weight_gamma=_cast(opts["p2_loss_weight_gamma"], n),
        sample_timesteps=_cast(opts["sample_timesteps"], n),
    )
    for name in ("use_noise_for_lowres_cond", "use_blur_for_lowres_cond"):
        flags = _cast(opts[name], n - 1)
        stage[name] = flags if len(flags) >= n else (False, *flags)  # the first unet has no low-res input
    for name, values in stage.items():
        if len(values) <= index:
            raise ValueError(f"decoder config {name}={values!r} has no value for unet {index + 1} of {n}")
    return {name: values[index] for name, values in stage.items()}


def unet_config(unet: dict, *, index: int, stage: dict, unconditional: bool, what: str, notes: Notes) -> UnetConfig:
    """One unet of a 1.1.0 decoder config as this project's `UnetConfig`, recast for its cascade stage
    the way 1.1.0's Decoder recast it (image embedding for the first stage only, low-res image after)."""
    unet = dict(unet)
    dim = unet.pop("dim", None)
    if not isinstance(dim, int):
        raise ValueError(f"{what} needs an integer dim, got {dim!r}")
    if unet.get("combine_upsample_fmaps"):
        raise ValueError(f"{what} sets combine_upsample_fmaps, which this importer does not reproduce")
    if unet.get("attend_at_middle") is False:
        notes.add(f"{what}: attend_at_middle=False ignored, as 1.1.0 built the middle attention regardless")
    opts = _options({k: v for k, v in unet.items() if k not in UNET_STAGE_SET and k != "combine_upsample_fmaps"},
                    UNET_DEFAULTS, (), what)
    image_cond = not unconditional and index == 0
    text_cond = not unconditional and bool(opts.pop("cond_on_text_encodings"))
    if image_cond and opts["image_embed_dim"] == (opts["cond_dim"] or dim):
        raise ValueError(f"{what}: image_embed_dim equal to cond_dim is not supported (1.1.0 then skipped the image projection)")
    self_attn = opts.pop("self_attn")
    self_attn = tuple(bool(a) for a in self_attn) if isinstance(self_attn, (list, tuple)) else bool(self_attn)
    channels = opts["channels"]
    return UnetConfig.build(
        None, owner="Unet", dim=dim, **{**opts, **UNET_ERA},
        self_attn=self_attn,
        cond_on_image_embeds=image_cond,
        cond_on_text_encodings=text_cond,
        lowres_cond=index > 0,
        lowres_noise_cond=index > 0 and bool(stage["use_noise_for_lowres_cond"]),
        learned_variance=bool(stage["learned_variance"]),
        channels_out=channels * (2 if stage["learned_variance"] else 1),
    )


__all__ = [
    "Notes",
    "clip_name",
    "decoder_options",
    "decoder_section",
    "image_sizes",
    "prior_configs",
    "stage_options",
    "unet_config",
]
