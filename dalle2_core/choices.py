"""The library's named choices, importable without torch: a command line lists them in its help at once.

Each is the single source its module builds from (`diffusion.samplers.SAMPLERS` is keyed by
`SAMPLER_NAMES`, `hub` resolves `PRESETS`, ...).
"""

SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp", "dpmpp_sde")
INPAINT_SAMPLERS = ("ddpm", "ddim")  # the samplers RePaint inpainting runs with; the first is the fallback
PRECISIONS = ("fp32", "fp16", "bf16")
BUNDLED = ("shapes",)  # shipped inside the package
PRESETS = ("karlo", "laion")  # downloaded and converted once into the dream cache
DEFAULT_MODEL = "karlo"
SHAPES_SPLITS = ("seen", "held")
SHAPES_FORMATS = ("txt", "jsonl")

__all__ = ["BUNDLED", "DEFAULT_MODEL", "INPAINT_SAMPLERS", "PRECISIONS", "PRESETS", "SAMPLER_NAMES", "SHAPES_FORMATS", "SHAPES_SPLITS"]
