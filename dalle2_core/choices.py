"""The library's named choices, importable without torch: a command line lists them in its help at once.

Each is the single source its module builds from (`diffusion.samplers.SAMPLERS` is keyed by
`SAMPLER_NAMES`, `hub` resolves `PRESETS`, ...).
"""

SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp", "dpmpp_sde")
SPACINGS = ("uniform", "leading", "trailing", "karras")  # which timesteps a run of n steps visits (diffusion.spacing)
INPAINT_SAMPLERS = ("ddpm", "ddim")  # the samplers RePaint inpainting runs with; the first is the fallback
PRECISIONS = ("fp32", "fp16", "bf16")
BUNDLED = ("shapes",)  # shipped inside the package
# the registry of model families: one line each, family -> its presets (names downloaded and converted once into the
# dream cache); the family's code is the folder dalle2_core/families/<family>/ (see dalle2_core.families)
FAMILIES = {
    "unclip": ("laion",),
    "karlo": ("karlo",),
    "kandinsky": ("kandinsky",),
}
PRESETS = tuple(preset for presets in FAMILIES.values() for preset in presets)
DEFAULT_MODEL = "kandinsky"
SHAPES_SPLITS = ("seen", "held")
SHAPES_FORMATS = ("txt", "jsonl")

__all__ = [
    "BUNDLED", "DEFAULT_MODEL", "FAMILIES", "INPAINT_SAMPLERS", "PRECISIONS", "PRESETS", "SAMPLER_NAMES", "SHAPES_FORMATS",
    "SHAPES_SPLITS", "SPACINGS",
]
