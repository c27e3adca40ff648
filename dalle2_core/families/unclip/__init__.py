"""unCLIP as DALLE2-pytorch builds it (Ramesh et al. 2022): a CLIP, a `DiffusionPrior` and a cascaded `Decoder` of
`Unet`s. The bundled shapes model, every model `dream train` writes and LAION's converted weights (`laion.py`, the
`laion` preset) are of this family; its networks are the library's own (`dalle2_core.prior`, `dalle2_core.decoder`)."""

from dalle2_core.families import Family

FAMILY = Family(
    name="unclip",
    pipeline="dalle2_core.families.unclip.pipeline:UnclipPipeline",
    components=("clip", "prior", "decoder"),
    presets={"laion": "dalle2_core.families.unclip.preset:resolve_laion"},
)
