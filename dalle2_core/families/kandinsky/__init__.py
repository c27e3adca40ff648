"""Kandinsky 2.2 (ai-forever, Apache-2.0): OpenCLIP ViT-bigG text tower -> diffusion prior -> a latent U-Net conditioned
on the image embedding (`decoder.KandinskyDecoder`) -> MoVQ; 512 px by default, 256 to 1024 per side. Converted from
diffusers' KandinskyV22 prior and decoder folders (`convert`); the vision tower and the inpainting U-Net are loaded on
first use."""

from dalle2_core.families import Family

FAMILY = Family(
    name="kandinsky",
    pipeline="dalle2_core.families.kandinsky.pipeline:KandinskyPipeline",
    components=("clip", "prior", "decoder"),
    on_demand=("image_encoder", "decoder_inpaint"),
    classes={"KandinskyDecoder": "dalle2_core.families.kandinsky.decoder"},
    presets={"kandinsky": "dalle2_core.families.kandinsky.preset:resolve_kandinsky"},
    diffusers={
        "KandinskyV22PriorPipeline": "dalle2_core.families.kandinsky.preset:converted_kandinsky",
        "KandinskyV22Pipeline": "dalle2_core.families.kandinsky.preset:converted_kandinsky",
    },
    converters={
        "KandinskyV22PriorPipeline": "dalle2_core.families.kandinsky.preset:convert_folders",
        "KandinskyV22Pipeline": "dalle2_core.families.kandinsky.preset:convert_folders",
        "KandinskyV22Img2ImgPipeline": "dalle2_core.families.kandinsky.preset:convert_folders",
    },
)
