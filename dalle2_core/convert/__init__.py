"""Reading weights trained elsewhere: pickles without running them (`safe_load`), safetensors filled into modules
built on meta (`materialize`), diffusers' and transformers' configs and key names (`diffusers_*`, `hf_clip_keys`).
A family's own converter lives in its folder (`dalle2_core.families.<name>`)."""

from dalle2_core.convert.safe_load import UnsafeCheckpointError, load_checkpoint

__all__ = ["UnsafeCheckpointError", "load_checkpoint"]
