"""Karlo v1-alpha (Kakao Brain, 2022): OpenAI CLIP ViT-L/14 towers, a standardised prior, a 64 px ADM decoder and a
64 -> 256 px super-resolution pair (`cascade.KarloCascade`), converted from diffusers' UnCLIPPipeline layout."""

from dalle2_core.families import Family

FAMILY = Family(
    name="karlo",
    pipeline="dalle2_core.families.karlo.pipeline:KarloPipeline",
    components=("clip", "prior", "decoder"),
    optional=("prior",),
    classes={"KarloCascade": "dalle2_core.families.karlo.cascade"},
    presets={"karlo": "dalle2_core.families.karlo.preset:resolve_karlo"},
    diffusers={
        "UnCLIPPipeline": "dalle2_core.families.karlo.preset:converted_unclip",
        "UnCLIPImageVariationPipeline": "dalle2_core.families.karlo.preset:converted_unclip",
    },
    converters={"UnCLIPPipeline": "dalle2_core.families.karlo.convert:convert_folders"},
)
