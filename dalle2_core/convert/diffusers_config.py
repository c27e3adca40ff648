"""diffusers `config.json` files of Karlo's components (kakaobrain/karlo-v1-alpha) as this project's configs.

One function per diffusers class: `PriorTransformer`, `UnCLIPTextProjModel`, `UNet2DConditionModel`,
`UNet2DModel`, `UnCLIPScheduler`. Every option is either carried over, or accepted only at the values
that this project implements; anything else (an unknown option, or a known one at another value) is
refused with one line naming it. Absent options take diffusers 0.33.1's defaults. `standardized_prior_config`
and `karlo_cascade_config` assemble the module configs the converter builds.
"""

from __future__ import annotations

import functools

from dalle2_core.adm.config import AdmAttentionConfig, AdmBlocksConfig, AdmConditioningConfig, AdmUnetConfig
from dalle2_core.adm.text_proj import TextProjConfig
from dalle2_core.diffusion import DiffusionConfig
from dalle2_core.helpers import exists
from dalle2_core.prior.prior_transformer import NUM_EXTRA_TOKENS, PriorTransformerConfig
from dalle2_core.prior.standardized_prior import StandardizedPriorConfig

ANY = object()  # an option carried over whatever its value
METADATA = frozenset({"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"})
# sampling steps of UnCLIPPipeline.__call__'s defaults, per scheduler

PRIOR_OPTIONS = dict(
    num_attention_heads=(32, ANY), attention_head_dim=(64, ANY), num_layers=(20, ANY), embedding_dim=(768, ANY),
    num_embeddings=(77, ANY), additional_embeddings=(NUM_EXTRA_TOKENS, (NUM_EXTRA_TOKENS,)), dropout=(0.0, ANY),
    time_embed_act_fn=("silu", ("silu",)), norm_in_type=(None, (None,)), embedding_proj_norm_type=(None, (None,)),
    encoder_hid_proj_type=("linear", ("linear",)), added_emb_type=("prd", ("prd",)), time_embed_dim=(None, ANY),
    embedding_proj_dim=(None, ANY), clip_embed_dim=(None, ANY),
)
TEXT_PROJ_OPTIONS = dict(
    clip_extra_context_tokens=(4, ANY), clip_embeddings_dim=(768, ANY), time_embed_dim=(None, ANY), cross_attention_dim=(None, ANY),
)
# options both U-Nets share, with the values implemented here
UNET_COMMON = dict(
    sample_size=(None, ANY), in_channels=(None, ANY), out_channels=(None, ANY), center_input_sample=(False, (False,)),
    flip_sin_to_cos=(True, (True,)), freq_shift=(0, (0,)), block_out_channels=(None, ANY), layers_per_block=(2, ANY),
    mid_block_scale_factor=(1, (1, 1.0)), downsample_padding=(1, ANY),  # resnet downsampling has no padded conv
    dropout=(0.0, ANY), act_fn=("silu", ("silu",)), norm_num_groups=(32, ANY), norm_eps=(1e-5, ANY),
    resnet_time_scale_shift=("default", ("default", "scale_shift")), attention_head_dim=(8, ANY),
    time_embedding_type=("positional", ("positional",)), time_embedding_dim=(None, ANY), class_embed_type=(None, (None, "identity")),
    num_class_embeds=(None, (None,)),
)
UNET2D_CONDITION_OPTIONS = dict(
    UNET_COMMON, in_channels=(4, ANY), out_channels=(4, ANY), down_block_types=(None, ANY), up_block_types=(None, ANY),
    mid_block_type=("UNetMidBlock2DCrossAttn", ("UNetMidBlock2DSimpleCrossAttn",)), only_cross_attention=(False, (False,)),
    cross_attention_dim=(1280, ANY), transformer_layers_per_block=(1, (1,)), reverse_transformer_layers_per_block=(None, (None,)),
    encoder_hid_dim=(None, (None,)), encoder_hid_dim_type=(None, (None,)), num_attention_heads=(None, (None,)),
    dual_cross_attention=(False, (False,)), use_linear_projection=(False, (False,)), addition_embed_type=(None, (None,)),
    addition_time_embed_dim=(None, (None,)), upcast_attention=(False, (False,)), resnet_skip_time_act=(False, (False,)),
    resnet_out_scale_factor=(1.0, (1, 1.0)), time_embedding_act_fn=(None, (None,)), timestep_post_act=(None, (None,)),
    time_cond_proj_dim=(None, (None,)), conv_in_kernel=(3, (3,)), conv_out_kernel=(3, (3,)),
    projection_class_embeddings_input_dim=(None, (None,)), attention_type=("default", ("default",)),
    class_embeddings_concat=(False, (False,)), mid_block_only_cross_attention=(None, (None, False)),
    cross_attention_norm=(None, (None,)), addition_embed_type_num_heads=(64, ANY),
)
UNET2D_OPTIONS = dict(
    UNET_COMMON, in_channels=(3, ANY), out_channels=(3, ANY), down_block_types=(None, ANY), up_block_types=(None, ANY),
    mid_block_type=("UNetMidBlock2D", ("UNetMidBlock2D",)), downsample_type=("conv", ANY), upsample_type=("conv", ANY),
    attn_norm_num_groups=(None, ANY), add_attention=(True, (False,)), num_train_timesteps=(None, ANY),
    class_embed_type=(None, (None,)),
)
SCHEDULER_OPTIONS = dict(
    num_train_timesteps=(1000, ANY), variance_type=("fixed_small_log", ("fixed_small_log", "learned_range")),
    clip_sample=(True, (True, False)), clip_sample_range=(1.0, ANY), prediction_type=("epsilon", ("epsilon", "sample")),
    beta_schedule=("squaredcos_cap_v2", ("squaredcos_cap_v2",)),
)
# block types onto (attends, its mirror on the way up)
DOWN_BLOCKS = {
    "ResnetDownsampleBlock2D": (False, "ResnetUpsampleBlock2D"),
    "SimpleCrossAttnDownBlock2D": (True, "SimpleCrossAttnUpBlock2D"),
}


def _options(config: dict, spec: dict, what: str) -> dict:
    """`config` with defaults filled in, after refusing unknown options and unimplemented values."""
    unknown = sorted(set(config) - set(spec) - METADATA)
    if unknown:
        raise ValueError(f"{what}: unsupported option(s) {', '.join(unknown)}; this importer reads {', '.join(sorted(spec))}")
    out = {}
    for key, (default_value, accepted) in spec.items():
        value = config.get(key, default_value)
        value = tuple(value) if isinstance(value, list) else value
        if accepted is not ANY and value not in accepted:
            raise ValueError(f"{what}: {key}={value!r} is not supported; accepted: {', '.join(map(repr, accepted))}")
        out[key] = value
    return out


def _uniform(value, key: str, what: str, accepted: str = "one value for every block"):
    """An option given per block (or per axis) that this project takes as a single value."""
    if isinstance(value, tuple):
        if len(set(value)) != 1:
            raise ValueError(f"{what}: {key}={value!r} is not supported; accepted: {accepted}")
        return value[0]
    return value


def _required(o: dict, keys, what: str) -> None:
    missing = [k for k in keys if o[k] is None]
    if missing:
        raise ValueError(f"{what}: {', '.join(missing)} must be given")


def _naming(what: str):
    """A decorator: a config error raised while building names the component (`what`) it is about."""
    def wrap(fn):
        @functools.wraps(fn)
        def built(*args, **kwargs):
            label = kwargs.get("what") or what
            try:
                return fn(*args, **kwargs)
            except (TypeError, ValueError) as err:
                if str(err).startswith(label):
                    raise
                raise ValueError(f"{label}: {err}") from None
        return built
    return wrap


@_naming("prior (PriorTransformer)")
def prior_transformer_config(config: dict, what: str = "prior (PriorTransformer)") -> PriorTransformerConfig:
    o = _options(config, PRIOR_OPTIONS, what)
    for key in ("embedding_proj_dim", "clip_embed_dim"):
        if o[key] not in (None, o["embedding_dim"]):
            raise ValueError(f"{what}: {key}={o[key]!r} is not supported; accepted: None or embedding_dim ({o['embedding_dim']})")
    return PriorTransformerConfig(
        embed_dim=o["embedding_dim"], heads=o["num_attention_heads"], head_dim=o["attention_head_dim"], depth=o["num_layers"],
        num_text_tokens=o["num_embeddings"], time_embed_dim=o["time_embed_dim"], dropout=float(o["dropout"]),
    )


@_naming("text_proj (UnCLIPTextProjModel)")
def text_proj_config(config: dict, what: str = "text_proj (UnCLIPTextProjModel)") -> TextProjConfig:
    o = _options(config, TEXT_PROJ_OPTIONS, what)
    _required(o, ("time_embed_dim", "cross_attention_dim"), what)
    return TextProjConfig(
        clip_dim=o["clip_embeddings_dim"], time_embed_dim=o["time_embed_dim"], context_dim=o["cross_attention_dim"],
        num_image_tokens=o["clip_extra_context_tokens"],
    )


def _levels(o: dict, what: str) -> tuple[bool, ...]:
    """Which levels attend, from the down block types; the up blocks must mirror them."""
    down, up = o["down_block_types"], o["up_block_types"]
    if not isinstance(down, tuple) or not isinstance(up, tuple) or len(down) != len(o["block_out_channels"]) or len(up) != len(down):
        raise ValueError(f"{what}: down_block_types and up_block_types need one entry per block_out_channels entry")
    bad = [b for b in down if b not in DOWN_BLOCKS]
    if bad:
        raise ValueError(f"{what}: down block type(s) {', '.join(bad)} not supported; accepted: {', '.join(DOWN_BLOCKS)}")
    mirrored = tuple(DOWN_BLOCKS[b][1] for b in reversed(down))
    if up != mirrored:
        raise ValueError(f"{what}: up_block_types {list(up)} do not mirror down_block_types; expected {list(mirrored)}")
    return tuple(DOWN_BLOCKS[b][0] for b in down)


def _unet_config(o: dict, *, levels: tuple[bool, ...], middle: bool, context_dim, added: bool, what: str) -> AdmUnetConfig:
    _required(o, ("sample_size", "block_out_channels", "norm_num_groups"), what)
    sample_size = _uniform(o["sample_size"], "sample_size", what, accepted="a square size")
    return AdmUnetConfig(
        sample_size=sample_size, in_channels=o["in_channels"], out_channels=o["out_channels"], widths=o["block_out_channels"],
        layers_per_block=_uniform(o["layers_per_block"], "layers_per_block", what),
        conditioning=AdmConditioningConfig(time_embed_dim=o["time_embedding_dim"], added_time_embed=added, context_dim=context_dim),
        attention=AdmAttentionConfig(
            levels=levels if any(levels) else (), middle=middle, head_dim=_uniform(o["attention_head_dim"], "attention_head_dim", what)
        ) if any(levels) or middle else AdmAttentionConfig(),  # without attention, the head width means nothing
        blocks=AdmBlocksConfig(
            scale_shift=o["resnet_time_scale_shift"] == "scale_shift", norm_groups=o["norm_num_groups"], norm_eps=float(o["norm_eps"]),
            dropout=float(o["dropout"]),
        ),
    )


@_naming("decoder (UNet2DConditionModel)")
def unet2d_condition_config(config: dict, what: str = "decoder (UNet2DConditionModel)") -> AdmUnetConfig:
    """Karlo's decoder: resnet / simple cross-attention blocks, the time embedding plus an identity class embedding."""
    o = _options(config, UNET2D_CONDITION_OPTIONS, what)
    levels = _levels(o, what)
    context_dim = _uniform(o["cross_attention_dim"], "cross_attention_dim", what)
    return _unet_config(o, levels=levels, middle=True, context_dim=context_dim, added=o["class_embed_type"] == "identity", what=what)


@_naming("super-resolution (UNet2DModel)")
def unet2d_config(config: dict, what: str = "super-resolution (UNet2DModel)") -> AdmUnetConfig:
    """Karlo's super-resolution U-Nets: resnet blocks only, no attention, no class embedding."""
    o = _options(config, UNET2D_OPTIONS, what)
    if any(_levels(o, what)):
        raise ValueError(f"{what}: only ResnetDownsampleBlock2D / ResnetUpsampleBlock2D blocks are supported in a UNet2DModel")
    return _unet_config(o, levels=(), middle=False, context_dim=None, added=False, what=what)


@_naming("UnCLIPScheduler")
def unclip_scheduler_config(config: dict, *, sample_steps: int | None = None, what: str = "UnCLIPScheduler") -> DiffusionConfig:
    """UnCLIPScheduler's numerics: float32 squaredcos_cap_v2 tables, fixed_small_log or an unclipped learned range."""
    o = _options(config, SCHEDULER_OPTIONS, what)
    return DiffusionConfig(
        timesteps=o["num_train_timesteps"], beta_schedule="cosine", objective="eps" if o["prediction_type"] == "epsilon" else "x0",
        learned_variance=o["variance_type"] == "learned_range", float32_schedule=True, posterior_log_variance="unclipped",
        x0_clamp=float(o["clip_sample_range"]) if o["clip_sample"] and exists(o["clip_sample_range"]) else None,
        sample_steps=sample_steps,
    )


def standardized_prior_config(prior: dict, scheduler: dict, *, sample_steps: int | None = None) -> StandardizedPriorConfig:
    """A `StandardizedPrior` from a PriorTransformer config and its UnCLIPScheduler config (Karlo's, Kandinsky's)."""
    diffusion = unclip_scheduler_config(scheduler, sample_steps=sample_steps, what="prior scheduler (UnCLIPScheduler)")
    if diffusion.learned_variance:
        raise ValueError("prior scheduler (UnCLIPScheduler): variance_type='learned_range' needs a network with variance outputs")
    return StandardizedPriorConfig(net=prior_transformer_config(prior), diffusion=diffusion)


__all__ = [
    "standardized_prior_config",
    "prior_transformer_config",
    "text_proj_config",
    "unclip_scheduler_config",
    "unet2d_condition_config",
    "unet2d_config",
]
