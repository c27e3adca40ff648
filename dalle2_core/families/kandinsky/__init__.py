"""Kandinsky 2.2 (ai-forever, Apache-2.0): CLIP ViT-bigG text tower -> diffusion prior -> image-embedding-conditioned latent U-Net -> MoVQ.

The converter (`families.kandinsky.convert`) reads diffusers' folders; the networks are the project's own:
`prior.StandardizedPrior`, `adm.AdmUnet` with image conditioning, `movq.MoVQ`, `clip.HFClipAdapter`.
"""

from dalle2_core.families.kandinsky.decoder import KandinskyDecoder, KandinskyDecoderConfig

__all__ = ["KandinskyDecoder", "KandinskyDecoderConfig"]
