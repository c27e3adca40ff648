"""dalle2_core: DALL-E 2 (unCLIP) in PyTorch — CLIP, diffusion prior, cascaded decoder.

The names below are imported on first use (PEP 562), so `import dalle2_core.choices` or reading
`dalle2_core.__version__` does not import torch.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "CLIP": "dalle2_core.clip",
    "DALLE2": "dalle2_core.dalle2",
    "Decoder": "dalle2_core.decoder.decoder",
    "DecoderTrainer": "dalle2_core.train",
    "DiffusionPrior": "dalle2_core.prior",
    "DiffusionPriorNetwork": "dalle2_core.prior",
    "DiffusionPriorTrainer": "dalle2_core.train",
    "NullVQGanVAE": "dalle2_core.vqgan.vae",
    "OpenAIClipAdapter": "dalle2_core.clip",
    "OpenClipAdapter": "dalle2_core.clip",
    "Unet": "dalle2_core.decoder.unet",
    "VQGanVAE": "dalle2_core.vqgan.vae",
    "XClipAdapter": "dalle2_core.clip",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dalle2_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
