"""transformers' CLIP towers (`CLIPTextModelWithProjection`, `CLIPVisionModelWithProjection`, or either tower of a
whole `CLIPModel`) onto open_clip's.

Names as transformers writes them (`models/clip/modeling_clip.py`) and where they go in open_clip's
`TextTransformer` / `VisionTransformer` (`open_clip/transformer.py`):

    text_model.embeddings.token_embedding.weight         token_embedding.weight
    text_model.embeddings.position_embedding.weight      positional_embedding
    text_model.encoder.layers.{i}.layer_norm1 / 2        transformer.resblocks.{i}.ln_1 / ln_2
    text_model.encoder.layers.{i}.self_attn.q/k/v_proj   transformer.resblocks.{i}.attn.in_proj_weight / _bias  (q, k, v stacked)
    text_model.encoder.layers.{i}.self_attn.out_proj     transformer.resblocks.{i}.attn.out_proj
    text_model.encoder.layers.{i}.mlp.fc1 / fc2          transformer.resblocks.{i}.mlp.c_fc / c_proj
    text_model.final_layer_norm                          ln_final
    text_projection.weight          (embed, width)       text_projection  (width, embed): transposed

    vision_model.embeddings.class_embedding              class_embedding
    vision_model.embeddings.patch_embedding.weight       conv1.weight                  (no bias in either)
    vision_model.embeddings.position_embedding.weight    positional_embedding
    vision_model.pre_layrnorm (sic) / post_layernorm     ln_pre / ln_post
    vision_model.encoder.layers.{i}...                   transformer.resblocks.{i}...  (as the text tower)
    visual_projection.weight        (embed, width)       proj  (width, embed): transposed

`*.embeddings.position_ids` (a 0..n-1 table that transformers before 4.31 stored) is checked and
dropped. The configs are translated the same way: a transformers `config.json` gives the open_clip
tower config, and is refused where open_clip's tower could not reproduce it.
"""

from __future__ import annotations

import torch

from dalle2_core.convert.materialize import Drop, Entry, Rule, rename

# transformers' CLIPTextConfig / CLIPVisionConfig defaults: `save_pretrained` leaves out values equal to them
TEXT_DEFAULTS = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "projection_dim": 512, "num_hidden_layers": 12,
    "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
VISION_DEFAULTS = {
    "hidden_size": 768, "intermediate_size": 3072, "projection_dim": 512, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
ACTIVATIONS = {"quick_gelu": True, "gelu": False}  # hidden_act -> open_clip's quick_gelu flag
OPEN_CLIP_EPS = 1e-5  # open_clip's LayerNorm default


def _transposed(t: torch.Tensor) -> torch.Tensor:
    return t.t().contiguous()  # a parameter of its own layout, as a plain load would make it


def _stacked(*qkv: torch.Tensor) -> torch.Tensor:
    return torch.cat(qkv, dim=0)


def _arange_check(t: torch.Tensor) -> str | None:
    n = t.shape[-1]
    ok = t.shape == (1, n) and torch.equal(t.reshape(-1).long(), torch.arange(n))
    return None if ok else f"should be the positions 0..{n - 1} of shape (1, {n}), got shape {tuple(t.shape)}"


def _block_rules(source: str, target: str) -> list[Entry]:
    """One pre-LayerNorm residual attention block (`source` / `target`: the block's prefixes)."""
    attn, out = f"{source}self_attn.", f"{target}attn."
    rules: list[Entry] = [
        rename(f"{source}layer_norm1.weight", f"{target}ln_1.weight"),
        rename(f"{source}layer_norm1.bias", f"{target}ln_1.bias"),
        rename(f"{source}layer_norm2.weight", f"{target}ln_2.weight"),
        rename(f"{source}layer_norm2.bias", f"{target}ln_2.bias"),
        rename(f"{attn}out_proj.weight", f"{out}out_proj.weight"),
        rename(f"{attn}out_proj.bias", f"{out}out_proj.bias"),
        rename(f"{source}mlp.fc1.weight", f"{target}mlp.c_fc.weight"),
        rename(f"{source}mlp.fc1.bias", f"{target}mlp.c_fc.bias"),
        rename(f"{source}mlp.fc2.weight", f"{target}mlp.c_proj.weight"),
        rename(f"{source}mlp.fc2.bias", f"{target}mlp.c_proj.bias"),
    ]
    for kind in ("weight", "bias"):  # nn.MultiheadAttention keeps q, k, v as one (3 * width, ...) tensor
        rules.append(Rule(f"{out}in_proj_{kind}", tuple(f"{attn}{p}_proj.{kind}" for p in "qkv"), _stacked))
    return rules


def text_key_map(layers: int, target_prefix: str = "") -> list[Entry]:
    """transformers `CLIPTextModelWithProjection` names -> open_clip `TextTransformer` names under `target_prefix`."""
    s, t = "text_model.", target_prefix
    rules: list[Entry] = [
        rename(f"{s}embeddings.token_embedding.weight", f"{t}token_embedding.weight"),
        rename(f"{s}embeddings.position_embedding.weight", f"{t}positional_embedding"),
        Drop(f"{s}embeddings.position_ids", _arange_check, optional=True),
        rename(f"{s}final_layer_norm.weight", f"{t}ln_final.weight"),
        rename(f"{s}final_layer_norm.bias", f"{t}ln_final.bias"),
        Rule(f"{t}text_projection", ("text_projection.weight",), _transposed),
    ]
    for i in range(layers):
        rules += _block_rules(f"{s}encoder.layers.{i}.", f"{t}transformer.resblocks.{i}.")
    return rules


def vision_key_map(layers: int, target_prefix: str = "") -> list[Entry]:
    """transformers `CLIPVisionModelWithProjection` names -> open_clip `VisionTransformer` names under `target_prefix`."""
    s, t = "vision_model.", target_prefix
    rules: list[Entry] = [
        rename(f"{s}embeddings.class_embedding", f"{t}class_embedding"),
        rename(f"{s}embeddings.patch_embedding.weight", f"{t}conv1.weight"),
        rename(f"{s}embeddings.position_embedding.weight", f"{t}positional_embedding"),
        Drop(f"{s}embeddings.position_ids", _arange_check, optional=True),
        rename(f"{s}pre_layrnorm.weight", f"{t}ln_pre.weight"),
        rename(f"{s}pre_layrnorm.bias", f"{t}ln_pre.bias"),
        rename(f"{s}post_layernorm.weight", f"{t}ln_post.weight"),
        rename(f"{s}post_layernorm.bias", f"{t}ln_post.bias"),
        Rule(f"{t}proj", ("visual_projection.weight",), _transposed),
    ]
    for i in range(layers):
        rules += _block_rules(f"{s}encoder.layers.{i}.", f"{t}transformer.resblocks.{i}.")
    return rules


# --- configs -------------------------------------------------------------------------------------------


def tower_config(config: dict, tower: str) -> dict:
    """The text or vision section of a transformers CLIP `config.json` (a tower's own, or a CLIPModel's),
    with transformers' defaults filled in."""
    if tower not in ("text", "vision"):
        raise ValueError(f"tower {tower!r} is unknown; accepted: 'text', 'vision'")
    defaults = TEXT_DEFAULTS if tower == "text" else VISION_DEFAULTS
    model_type = config.get("model_type")
    if model_type == "clip":  # a whole CLIPModel: its tower section, as CLIPTextConfig.from_pretrained reads it,
        section = dict(config.get(f"{tower}_config") or {})  # with the width of the projections the model holds
        section.update({"projection_dim": config["projection_dim"]} if "projection_dim" in config else {})
    elif model_type in (None, f"clip_{tower}_model"):
        section = dict(config)
    else:
        raise ValueError(f"config model_type {model_type!r} is not a CLIP {tower} tower; accepted: 'clip', 'clip_{tower}_model'")
    return {**defaults, **{k: v for k, v in section.items() if v is not None or k not in defaults}}


def _common(hf: dict, what: str) -> tuple[bool, dict, float]:
    """(quick_gelu, norm kwargs, mlp_ratio) of a tower, refusing what open_clip cannot build."""
    act = hf["hidden_act"]
    if act not in ACTIVATIONS:
        raise ValueError(f"{what}: hidden_act {act!r} is not supported; accepted: {', '.join(ACTIVATIONS)}")
    width, inner = hf["hidden_size"], hf["intermediate_size"]
    ratio = inner / width
    if int(width * ratio) != inner:
        raise ValueError(f"{what}: intermediate_size {inner} is not reachable from hidden_size {width} by open_clip's mlp_ratio")
    eps = float(hf["layer_norm_eps"])
    return ACTIVATIONS[act], ({} if eps == OPEN_CLIP_EPS else {"eps": eps}), ratio


def _heads(hf: dict, what: str) -> int:
    heads, width = hf["num_attention_heads"], hf["hidden_size"]
    if width % heads:
        raise ValueError(f"{what}: hidden_size {width} is not divisible by num_attention_heads {heads}")
    return heads


def open_clip_text_cfg(config: dict) -> tuple[int, bool, dict]:
    """(embed_dim, quick_gelu, open_clip text_cfg) for a transformers CLIP text `config.json`."""
    hf = tower_config(config, "text")
    quick_gelu, norm_kwargs, ratio = _common(hf, "text tower")
    eos = hf.get("eos_token_id", 49407)
    if eos not in (2, hf["vocab_size"] - 1):
        # 2 (older configs): pooled at the highest id; the last id: pooled at its first occurrence. For
        # tokenised prompts both are the end-of-text token, which is what open_clip's argmax pooling reads
        raise ValueError(f"text tower: eos_token_id {eos} is not supported; accepted: 2 or {hf['vocab_size'] - 1}")
    text_cfg = {
        "context_length": hf["max_position_embeddings"], "vocab_size": hf["vocab_size"], "width": hf["hidden_size"],
        "heads": _heads(hf, "text tower"), "layers": hf["num_hidden_layers"], "mlp_ratio": ratio,
    }
    if norm_kwargs:
        text_cfg["norm_kwargs"] = norm_kwargs
    return hf["projection_dim"], quick_gelu, text_cfg


def open_clip_vision_cfg(config: dict) -> tuple[int, bool, dict]:
    """(embed_dim, quick_gelu, open_clip vision_cfg) for a transformers CLIP vision `config.json`."""
    hf = tower_config(config, "vision")
    quick_gelu, norm_kwargs, ratio = _common(hf, "vision tower")
    if hf["num_channels"] != 3:
        raise ValueError(f"vision tower: num_channels {hf['num_channels']} is not supported; accepted: 3")
    width = hf["hidden_size"]
    vision_cfg = {
        "image_size": hf["image_size"], "patch_size": hf["patch_size"], "width": width, "layers": hf["num_hidden_layers"],
        "head_width": width // _heads(hf, "vision tower"), "mlp_ratio": ratio,
    }
    if norm_kwargs:
        vision_cfg["norm_kwargs"] = norm_kwargs
    return hf["projection_dim"], quick_gelu, vision_cfg


def other_tower_drops(config: dict, tower: str) -> list[Entry]:
    """What a whole `CLIPModel` file (openai/clip-vit-large-patch14's `model.safetensors`) holds beside `tower`: the
    other tower, its projection and `logit_scale`, read and dropped. Empty for a single tower's config."""
    if config.get("model_type") != "clip":
        return []
    other = "vision" if tower == "text" else "text"
    drops: list[Entry] = [Drop(name) for name in transformers_shapes(config, other)]
    return [*drops, Drop(f"{other}_model.embeddings.position_ids", optional=True), Drop("logit_scale")]


def transformers_shapes(config: dict, tower: str) -> dict[str, tuple[int, ...]]:
    """The state-dict names and shapes transformers gives a CLIP tower of this config (no position_ids)."""
    hf = tower_config(config, tower)
    w, inner, n = hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"]
    if tower == "text":
        s = "text_model."
        shapes = {
            f"{s}embeddings.token_embedding.weight": (hf["vocab_size"], w),
            f"{s}embeddings.position_embedding.weight": (hf["max_position_embeddings"], w),
            f"{s}final_layer_norm.weight": (w,), f"{s}final_layer_norm.bias": (w,),
            "text_projection.weight": (hf["projection_dim"], w),
        }
    else:
        s, patch, grid = "vision_model.", hf["patch_size"], hf["image_size"] // hf["patch_size"]
        shapes = {
            f"{s}embeddings.class_embedding": (w,),
            f"{s}embeddings.patch_embedding.weight": (w, hf["num_channels"], patch, patch),
            f"{s}embeddings.position_embedding.weight": (grid * grid + 1, w),
            f"{s}pre_layrnorm.weight": (w,), f"{s}pre_layrnorm.bias": (w,),
            f"{s}post_layernorm.weight": (w,), f"{s}post_layernorm.bias": (w,),
            "visual_projection.weight": (hf["projection_dim"], w),
        }
    for i in range(n):
        block = f"{s}encoder.layers.{i}."
        for name in ("layer_norm1", "layer_norm2"):
            shapes |= {f"{block}{name}.weight": (w,), f"{block}{name}.bias": (w,)}
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes |= {f"{block}self_attn.{name}.weight": (w, w), f"{block}self_attn.{name}.bias": (w,)}
        shapes |= {f"{block}mlp.fc1.weight": (inner, w), f"{block}mlp.fc1.bias": (inner,)}
        shapes |= {f"{block}mlp.fc2.weight": (w, inner), f"{block}mlp.fc2.bias": (w,)}
    return shapes


__all__ = [
    "open_clip_text_cfg",
    "other_tower_drops",
    "open_clip_vision_cfg",
    "text_key_map",
    "tower_config",
    "transformers_shapes",
    "vision_key_map",
]
