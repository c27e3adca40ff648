"""The benchmark configurations, built the same way in `dalle2_core` and in `dalle2_pytorch`.

Both libraries take the DALLE2-pytorch README's keyword API, so one set of keywords builds both; where a call
signature differs (the prior's sampling loop) the case says so in one line. Every case returns a
`Case`: a `run()` closure doing one unit of work and how to read its timing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

LIBRARIES = {"ours": "dalle2_core", "peer": "dalle2_pytorch"}

# the DALLE2-pytorch README's decoder unet (Unet(dim=128, image_embed_dim=512, cond_dim=128, ...))
SPEC_UNET = dict(dim=128, image_embed_dim=512, cond_dim=128, channels=3, dim_mults=(1, 2, 4, 8))
# the DALLE2-pytorch README's decoder-training example unet (`Unet(dim=32, image_embed_dim=512, cond_dim=128, ...)`)
SEED_UNET = dict(dim=32, image_embed_dim=512, cond_dim=128, channels=3, dim_mults=(1, 2, 4, 8))
# the LAION decoder's shape (docs/laion.md) at a fifth of its width and half its depth
LAION_SMALL_UNET = dict(
    dim=64, image_embed_dim=512, text_embed_dim=512, cond_dim=128, channels=3, dim_mults=(1, 2, 3, 4),
    num_resnet_blocks=2, attn_heads=8, attn_dim_head=64, sparse_attn=True, memory_efficient=True,
    cond_on_text_encodings=True, self_attn=(False, True, True, True),
)
# options only one library knows, needed so both compute the same function
LIBRARY_EXTRAS = {
    # 1.15.6 downsamples by pixel-unshuffle + 1x1 conv (SP-conv); ours defaults to 1.1.0's 4x4 stride-2 conv
    ("ours", "spec"): dict(downsample_mode="unshuffle"),
    ("ours", "seed"): dict(downsample_mode="unshuffle"),
    # 1.15.6's linear attention l2-normalises v; ours keeps 1.1.0's default off
    ("ours", "laion"): dict(linear_attn_normalize_v=True, downsample_mode="unshuffle"),
}
SPEC_PRIOR_NET = dict(dim=512, depth=6, dim_head=64, heads=8)
DECODER_OPTIONS = dict(image_cond_drop_prob=0.1, text_cond_drop_prob=0.5, use_dynamic_thres=False)
TEXT_LEN, TEXT_WORDS = 77, 20  # CLIP context; a prompt's real tokens, the rest is zero padding


@dataclass
class Case:
    name: str
    kind: str  # "train": one optimiser step per run(); "sample": `steps` denoising steps per run()
    batch: int
    run: Callable[[], object]
    steps: int = 1
    modules: list = field(default_factory=list)  # networks whose parameters are counted

    @property
    def params(self) -> int:
        return sum(p.numel() for m in self.modules for p in m.parameters())


def import_library(impl: str):
    if impl not in LIBRARIES:
        raise ValueError(f"unknown implementation {impl!r}; accepted: {', '.join(LIBRARIES)}")
    return importlib.import_module(LIBRARIES[impl])


def _inputs(batch: int, size: int | None, device, *, text: bool = False) -> dict:
    """Seeded images in [0, 1], l2-normalised image embeddings and zero-padded text encodings."""
    g = torch.Generator().manual_seed(0)
    out = dict(image_embed=torch.nn.functional.normalize(torch.randn(batch, 512, generator=g), dim=-1))
    if size is not None:
        out["images"] = torch.rand(batch, 3, size, size, generator=g)
    if text:
        enc = torch.randn(batch, TEXT_LEN, 512, generator=g)
        enc[:, TEXT_WORDS:] = 0.0  # padding rows are all zero, as CLIP adapters return them
        out["text_encodings"] = enc
    return {k: v.to(device) for k, v in out.items()}


def _unet_kwargs(impl: str, config: str, options: dict | None = None) -> dict:
    """The case's unet keywords; `options` (ours only: `--ours-unet-option`) are added for our library."""
    base = dict(spec=SPEC_UNET, seed=SEED_UNET, laion=LAION_SMALL_UNET)[config]
    return {**base, **LIBRARY_EXTRAS.get((impl, config), {}), **(options or {} if impl == "ours" else {})}


def _autocast(device, precision: str):
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def _train_step(model, optimizer, loss_fn, device, precision) -> Callable[[], float]:
    def run():
        with _autocast(device, precision):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return run


def decoder_train(impl, device, precision, *, config: str, size: int, batch: int = 4, channels_last=False,
                  unet_options=None) -> Case:
    """One AdamW step of the decoder's diffusion loss (spec: `loss = decoder(images)`), precomputed embeddings."""
    lib = import_library(impl)
    text = config == "laion"
    unet = lib.Unet(**_unet_kwargs(impl, config, unet_options))
    decoder = lib.Decoder(unet=unet, image_size=size, timesteps=1000, **DECODER_OPTIONS)
    decoder.to(device).train()
    if channels_last:
        decoder.to(memory_format=torch.channels_last)
    x = _inputs(batch, size, device, text=text)
    images = x.pop("images")
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-4)
    run = _train_step(decoder, optimizer, lambda: decoder(images, **x), device, precision)
    return Case(f"decoder_train_{config}_{size}", "train", batch, run, modules=[decoder.unets[0]])


def decoder_sample(impl, device, precision, *, config: str, size: int, batch: int = 4, steps: int = 4,
                   channels_last=False, unet_options=None) -> Case:
    """Guided DDPM sampling (cond_scale 3) over all `steps` steps of a decoder trained with that many."""
    lib = import_library(impl)
    text = config == "laion"
    unet = lib.Unet(**_unet_kwargs(impl, config, unet_options))
    decoder = lib.Decoder(unet=unet, image_size=size, timesteps=steps, **DECODER_OPTIONS)
    decoder.to(device).eval()
    if channels_last:
        decoder.to(memory_format=torch.channels_last)
    x = _inputs(batch, None, device, text=text)

    def run():
        with torch.no_grad(), _autocast(device, precision):
            return decoder.sample(**x, cond_scale=3.0)

    return Case(f"decoder_sample_{config}_{size}", "sample", batch, run, steps=steps, modules=[decoder.unets[0]])


def _prior(lib, timesteps: int):
    net = lib.DiffusionPriorNetwork(**SPEC_PRIOR_NET)
    return lib.DiffusionPrior(net=net, image_embed_dim=512, timesteps=timesteps, cond_drop_prob=0.2)


def prior_train(impl, device, precision, *, batch: int = 32, **_) -> Case:
    """One AdamW step of the prior's loss on precomputed CLIP embeddings and text encodings."""
    lib = import_library(impl)
    prior = _prior(lib, timesteps=100).to(device).train()
    x = _inputs(batch, None, device, text=True)
    text_embed = torch.nn.functional.normalize(torch.randn(batch, 512, generator=torch.Generator().manual_seed(1)), dim=-1)
    text_embed = text_embed.to(device)
    optimizer = torch.optim.AdamW(prior.parameters(), lr=1e-4)

    def loss():
        # the peer scales image_embed in place: hand it a fresh copy each step
        return prior(text_embed=text_embed, image_embed=x["image_embed"].clone(), text_encodings=x["text_encodings"])

    return Case("prior_train", "train", batch, _train_step(prior, optimizer, loss, device, precision), modules=[prior.net])


def prior_sample(impl, device, precision, *, batch: int = 8, steps: int = 4, **_) -> Case:
    """Guided DDPM sampling (cond_scale 3) of image embeddings: 4 prompts x 2 candidates, `steps` steps."""
    lib = import_library(impl)
    prior = _prior(lib, timesteps=steps).to(device).eval()
    x = _inputs(batch, None, device, text=True)
    text_embed = x["image_embed"]  # any unit vectors do for timing
    noise = torch.randn(batch, 512, generator=torch.Generator().manual_seed(2)).to(device)

    def run():
        with torch.no_grad(), _autocast(device, precision):
            if impl == "ours":
                return prior.denoise(noise, text_embed=text_embed, text_encodings=x["text_encodings"], cond_scale=3.0)
            # 1.15.6 draws its own noise and takes the condition as a dict
            cond = dict(text_embed=text_embed, text_encodings=x["text_encodings"])
            return prior.p_sample_loop((batch, 512), text_cond=cond, cond_scale=3.0)

    return Case("prior_sample", "sample", batch, run, steps=steps, modules=[prior.net])


CASES: dict[str, Callable[..., Case]] = {
    "decoder_train_spec_64": lambda *a, **k: decoder_train(*a, config="spec", size=64, **k),
    "decoder_train_spec_128": lambda *a, **k: decoder_train(*a, config="spec", size=128, **k),
    "decoder_train_laion_64": lambda *a, **k: decoder_train(*a, config="laion", size=64, **k),
    "decoder_train_seed_64": lambda *a, **k: decoder_train(*a, config="seed", size=64, batch=8, **k),
    "prior_train": prior_train,
    "decoder_sample_spec_64": lambda *a, **k: decoder_sample(*a, config="spec", size=64, **k),
    "decoder_sample_laion_64": lambda *a, **k: decoder_sample(*a, config="laion", size=64, **k),
    "prior_sample": prior_sample,
}
