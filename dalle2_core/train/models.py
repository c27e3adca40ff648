"""The networks a run trains, built (and so validated) before the first step.

Each component comes from the first of: the resumed run's folder, the `init` model, the presets
(`presets.py`, `--config` merged on top) with the widths of the run's CLIP. Every component is built
even when its stage is not trained in this call, so a wrong value anywhere in the configuration is
found before any work. `architecture` is what a resumed run must keep: it is stored in
`training/settings.json` and compared on resume.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace

import torch
from torch import nn

from dalle2_core import checkpoint
from dalle2_core.helpers import exists
from dalle2_core.train.presets import load_presets, read_overrides
from dalle2_core.train.run_dir import RunDir
from dalle2_core.train.settings import DEFAULT_IMAGE_SIZE, OpenClip, TrainingError, TrainSettings

_SECTIONS_OF = {"clip": ("clip",), "prior": ("prior_network", "prior"), "decoder": ("unets", "decoder")}


@dataclass
class Models:
    clip: nn.Module  # the project's CLIP (trainable) or a frozen adapter
    prior: nn.Module
    decoder: nn.Module
    architecture: dict  # image_size, clip, init, presets

    @property
    def clip_trainable(self) -> bool:
        from dalle2_core.clip import CLIP

        return isinstance(self.clip, CLIP)


def _usage(setting: str, message: str) -> TrainingError:
    return TrainingError(message, setting=setting, usage=True)


def _normal(value):
    """`value` as JSON gives it back (tuples become lists), so stored and new records compare equal."""
    return json.loads(json.dumps(value, default=str))


def _first_difference(new, old, path: str = "") -> tuple[str, object, object] | None:
    if isinstance(new, dict) and isinstance(old, dict):
        for key in sorted(set(new) | set(old)):
            found = _first_difference(new.get(key), old.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    if isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        return next((d for i, (a, b) in enumerate(zip(new, old)) if (d := _first_difference(a, b, f"{path}[{i}]"))), None)
    return None if new == old else (path, new, old)


def _open_init(settings: TrainSettings, stored: dict | None, run: RunDir, device):
    """(record, loaded model) of the model the run starts from, or (None, None). A resumed run
    needs it again only for a component its folder does not have yet."""
    from dalle2_core.hub import resolve_model

    spec = settings.init
    if exists(stored):
        spec = spec or (stored.get("init") or {}).get("spec")
        if all(run.component(name) for name in checkpoint.COMPONENTS):
            return stored.get("init"), None
    if not spec:
        return None, None
    try:
        resolved = resolve_model(spec)
        model = checkpoint.load_model(resolved.path, device=device, dtype=torch.float32)
    except checkpoint.ModelLoadError as err:
        raise TrainingError(f"the model to start from cannot be loaded: {err}", setting="init") from None
    record = dict(spec=resolved.spec, source=resolved.source, revision=resolved.revision, path=str(resolved.path))
    return record, model


def _image_size(settings: TrainSettings, stored: dict | None, init) -> int:
    if exists(stored):
        return stored["image_size"]
    if exists(init) and exists(init.decoder):
        size = init.decoder.image_size
        if exists(settings.image_size) and settings.image_size != size:
            raise _usage("image_size", f"image size {settings.image_size} differs from the {size} px of the model to start from")
        return size
    return settings.image_size or DEFAULT_IMAGE_SIZE


def _build_clip(settings: TrainSettings, run: RunDir, clip_section, init, device) -> nn.Module:
    from dalle2_core.clip import CLIP, ClipWeightsUnavailable, OpenClipAdapter

    if exists(path := run.component("clip")) and settings.resume:
        return checkpoint.load_component(path, device=device)
    if exists(init) and exists(init.clip):
        if exists(settings.clip):
            raise _usage("clip", f"the model to start from has its own CLIP; {settings.clip} cannot replace it")
        return init.clip
    if exists(settings.clip):
        try:
            return OpenClipAdapter(settings.clip.arch, settings.clip.pretrained).to(device)
        except ClipWeightsUnavailable as err:
            raise TrainingError(str(err), setting="clip") from None
        except ValueError as err:
            raise _usage("clip", str(err)) from None
    return _built("clip", lambda: CLIP(**clip_section()).to(device))


def _built(section: str, build):
    """`build()`, its configuration errors named by the presets section they come from."""
    try:
        return build()
    except (TypeError, ValueError) as err:
        raise _usage("config", f"config section {section!r} is invalid: {err}") from None


def _presets(settings: TrainSettings, stored: dict | None, image_size: int, clip=None) -> dict:
    """The presets for this run: the stored ones on resume unless a config is given, else built."""
    if exists(stored) and not exists(settings.config):
        return stored["presets"]
    widths = None
    if exists(clip):
        from dalle2_core.clip import as_clip_adapter

        adapter = as_clip_adapter(clip)
        widths = (adapter.dim_latent, adapter.dim_text)
    try:
        return load_presets(image_size, settings.config, widths)
    except ValueError as err:
        raise _usage("config" if exists(settings.config) else "image_size", str(err)) from None


def _check_init_overrides(settings: TrainSettings, init) -> None:
    """A config section for a component that the init model provides would silently do nothing: refuse it."""
    if not (exists(init) and exists(settings.config)):
        return
    overridden = set(read_overrides(settings.config))
    for component, sections in _SECTIONS_OF.items():
        if exists(getattr(init, component)) and overridden & set(sections):
            raise _usage("config", f"config sections {sorted(overridden & set(sections))} do not apply: "
                                   f"the {component} comes from the model to start from")


def _build_prior(presets, clip, run: RunDir, init, resume: bool, device) -> nn.Module:
    from dalle2_core.prior import DiffusionPrior, DiffusionPriorNetwork

    if resume and exists(path := run.component("prior")):
        return checkpoint.load_component(path, device=device, clip=clip)
    if exists(init) and exists(init.prior):
        return init.prior
    net = _built("prior_network", lambda: DiffusionPriorNetwork(**presets["prior_network"]))
    return _built("prior", lambda: DiffusionPrior(net, clip=clip, **presets["prior"]).to(device))


def _build_decoder(presets, clip, run: RunDir, init, resume: bool, device) -> nn.Module:
    from dalle2_core.decoder import Decoder, Unet

    if resume and exists(path := run.component("decoder")):
        return checkpoint.load_component(path, device=device, clip=clip)
    if exists(init) and exists(init.decoder):
        return init.decoder
    unets = _built("unets", lambda: tuple(Unet(**kw) for kw in presets["unets"]))
    return _built("decoder", lambda: Decoder(unet=unets, clip=clip, **presets["decoder"]).to(device))


def _check_resumed(settings: TrainSettings, stored: dict, presets: dict) -> None:
    """A resumed run keeps its architecture: a setting given again must equal the stored one."""
    given = {"image_size": settings.image_size, "clip": str(settings.clip) if exists(settings.clip) else None,
             "init": settings.init}
    for name, value in given.items():
        old = stored.get(name)
        old = old["spec"] if name == "init" and isinstance(old, dict) else old
        if exists(value) and value != old:
            raise _usage(name, f"{name} {value} differs from this run's {old}: a resumed run keeps its architecture")
    found = _first_difference(_normal(presets), _normal(stored["presets"]))
    if found:
        path, new, old = found
        raise _usage("config", f"the config sets {path} to {json.dumps(new)}; this run was started with {json.dumps(old)}")


def _stored_clip(record: str | None) -> OpenClip | None:
    """The `OpenClip` that settings.json names as `str(OpenClip(...))`."""
    if not record:
        return None
    arch, _, pretrained = record.removeprefix("open_clip:").partition("/")
    return OpenClip(arch, pretrained or None)


@contextlib.contextmanager
def _seeded(seed: int, component: int):
    """Each fresh component draws its initial weights from a seed of its own: the same whether the components
    before it were built or loaded (a loaded one draws nothing), so a resumed run builds what an uninterrupted
    one did."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + component)
        yield


def build_models(settings: TrainSettings, run: RunDir, device: torch.device) -> Models:
    """Every component of the run, on `device` (weights identical on every process: same seed, same files)."""
    stored = run.stored() if settings.resume else None
    if exists(stored) and not exists(settings.clip):  # the CLIP a resumed run was started with
        settings = replace(settings, clip=_stored_clip(stored.get("clip")))
    init_record, init = _open_init(settings, stored, run, device)
    _check_init_overrides(settings, init)
    image_size = _image_size(settings, stored, init)
    with _seeded(settings.seed, 0):
        clip = _build_clip(settings, run, lambda: _presets(settings, None, image_size)["clip"], init, device)
    presets = _presets(settings, stored, image_size, clip)
    if exists(stored):
        _check_resumed(settings, stored, presets)
    with _seeded(settings.seed, 1):
        prior = _build_prior(presets, clip, run, init, settings.resume, device)
    with _seeded(settings.seed, 2):
        decoder = _build_decoder(presets, clip, run, init, settings.resume, device)
    clip_name = str(settings.clip) if exists(settings.clip) else None
    architecture = dict(image_size=image_size, clip=clip_name, init=init_record, presets=_normal(presets))
    return Models(clip=clip, prior=prior, decoder=decoder, architecture=architecture)
