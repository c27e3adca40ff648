"""Model folders: round trip, shared CLIP stored once, atomic writes, and one-line load errors."""

import dataclasses
import json
import os

import pytest
import torch
from helpers.checkpoint_tiny import DEFAULTS, save_tiny_model, tiny_modules
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dalle2_core import component
from dalle2_core.atomic import atomic_path
from dalle2_core.checkpoint import (
    ModelLoadError,
    SamplingSettings,
    load_component,
    load_model,
    read_index,
    save_component,
    save_model,
)
from dalle2_core.prior import DiffusionPriorNetwork


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    clip, prior, decoder = tiny_modules()
    save_model(folder, clip=clip, prior=prior, decoder=decoder, defaults=DEFAULTS)
    return folder, (clip, prior, decoder)


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_round_trip_state_dicts_and_defaults(saved):
    folder, (clip, prior, decoder) = saved
    model = load_model(folder)
    _assert_same_state(clip, model.clip)
    _assert_same_state(prior, model.prior)
    _assert_same_state(decoder, model.decoder)
    assert model.defaults == SamplingSettings(steps=(3, 2), prior_steps=3, cond_scale=(2.0, 1.0), sampler="ddim")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["format"] == "dream-model" and index["version"] == 1
    assert index["components"] == ["clip", "prior", "decoder"]
    # the CLIP is loaded once and shared by the prior and the decoder
    assert model.prior.clip.clip is model.clip and model.decoder.clip.clip is model.clip
    assert not model.prior.training and not model.decoder.training


def test_clip_weights_are_stored_once(saved):
    folder, (clip, _, _) = saved
    for name in ("prior", "decoder"):
        with safe_open(str(folder / name / "model.safetensors"), "pt") as f:
            keys = list(f.keys())
        assert keys and not any(k.startswith("clip.") for k in keys), name
    with safe_open(str(folder / "clip" / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == sorted(clip.state_dict())
    config = json.loads((folder / "decoder" / "config.json").read_text())
    assert config["class"] == "Decoder" and len(config["config"]["unets"]) == 2


def test_round_trip_outputs_are_identical(saved):
    folder, (_, prior, decoder) = saved
    model = load_model(folder)
    prior.eval(), decoder.eval()

    def run(p, d):
        g = torch.Generator().manual_seed(7)
        embed = p.sample(text=["a red cube"], num_samples_per_batch=2, steps=3, generator=g)
        return embed, d.sample(image_embed=embed, steps=(3, 2), cond_scale=(2.0, 1.0), generator=g)

    (e1, img1), (e2, img2) = run(prior, decoder), run(model.prior, model.decoder)
    # The same weights (bit for bit, checked by the round trip above) and the same seeds: the same computation. Its
    # bits are not promised: the reloaded tensors are memory-mapped, and on some CPUs (AVX-512 with bf16/VNNI units)
    # the math kernels pick another summation order by alignment or batch size, a few float32 ulps per op (~1e-7
    # relative). Through these few sampling steps that stays below 1e-5; a wrong, missing or swapped tensor moves
    # the outputs by more than 1e-2.
    torch.testing.assert_close(e2, e1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(img2, img1, rtol=1e-5, atol=1e-5)
    assert img1.shape == (1, 3, 32, 32)
    assert 0.0 <= img1.min() and img1.max() <= 1.0


def test_dtype_and_device_are_the_callers(saved):
    folder, _ = saved
    model = load_model(folder, device="cpu", dtype=torch.bfloat16)
    dtypes = {p.dtype for m in (model.clip, model.prior, model.decoder) for p in m.parameters()}
    assert dtypes == {torch.bfloat16}


def test_files_with_tied_weight_aliases_still_load(tmp_path):
    # earlier versions stored a tensor that two names shared once, its other name in "aliases"
    torch.manual_seed(0)
    net = DiffusionPriorNetwork(dim=16, depth=1, dim_head=8, heads=2)
    first, second = [m for m in net.modules() if isinstance(m, torch.nn.Linear) and m.weight.shape == (16, 16)][:2]
    with torch.no_grad():
        second.weight.copy_(first.weight * 0 + 0.25)
        first.weight.fill_(0.25)
    folder = save_component(net, tmp_path / "net")
    names = {id(m.weight): n + ".weight" for n, m in net.named_modules() if m in (first, second)}
    kept, alias = names[id(first.weight)], names[id(second.weight)]
    state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if k != alias}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt", "aliases": json.dumps({alias: kept})})
    loaded = load_component(folder)
    _assert_same_state(net, loaded)
    assert loaded.state_dict()[alias].sum().item() == 0.25 * 256
    with safe_open(str(save_component(loaded, tmp_path / "again") / "model.safetensors"), "pt") as f:
        assert alias in f.keys() and "aliases" not in f.metadata()  # new files store every name


def test_an_unknown_key_beside_class_and_config_is_an_error(tmp_path):
    folder = save_tiny_model(tmp_path / "m")
    path = folder / "prior" / "config.json"
    entry = json.loads(path.read_text())
    path.write_text(json.dumps({**entry, "weights_dtype": "float16"}))
    with pytest.raises(ModelLoadError, match=r"prior/config.json has unknown key\(s\) 'weights_dtype'; accepted: class, config"):
        load_model(folder)


def test_an_open_clip_named_by_its_tag_is_stored_without_building_or_weights(tmp_path):
    from dalle2_core.clip import OpenClipConfig

    _, prior, _ = tiny_modules()
    folder = save_model(tmp_path / "m", clip=OpenClipConfig("ViT-L-14", "openai"), prior=prior)
    assert sorted(p.name for p in (folder / "clip").iterdir()) == ["config.json"]
    entry = json.loads((folder / "clip" / "config.json").read_text())
    assert entry == {"class": "OpenClipAdapter", "config": {"name": "ViT-L-14", "pretrained": "openai", "model_kwargs": {}}}
    with pytest.raises(TypeError, match="only with a pretrained tag, got None"):
        save_model(tmp_path / "n", clip=OpenClipConfig("ViT-B-32", None))


def test_an_open_clip_from_a_local_file_is_stored_as_weights_not_as_its_path(tmp_path):
    from dalle2_core.clip import OpenClipAdapter

    tiny = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
                text_cfg=dict(context_length=8, vocab_size=49408, width=32, heads=2, layers=1))
    torch.manual_seed(0)
    source = OpenClipAdapter("ViT-B-32", pretrained=None, **tiny)
    weights = tmp_path / "mine.pt"
    torch.save(source.clip.state_dict(), weights)
    clip = OpenClipAdapter("ViT-B-32", pretrained=str(weights), **tiny)
    folder = save_model(tmp_path / "m", clip=clip)
    entry = json.loads((folder / "clip" / "config.json").read_text())
    assert entry["config"]["pretrained"] is None and str(tmp_path) not in json.dumps(entry)
    weights.unlink()  # the folder does not need the file
    _assert_same_state(source, load_model(folder).clip)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelLoadError, match=r"is not a model folder: expected a model folder with model_index.json") as err:
        load_model(tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing")
    (tmp_path / "model_index.json").write_text('{"format": "other", "version": 1}')
    with pytest.raises(ModelLoadError, match="has format 'other'; expected 'dream-model'"):
        load_model(tmp_path)
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="is not valid JSON"):
        load_model(tmp_path)


def test_truncated_weights_are_a_clear_error(saved, tmp_path):
    folder = save_tiny_model(tmp_path / "m")
    weights = folder / "decoder" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"decoder/model.safetensors is corrupted or truncated") as err:
        load_model(folder)
    assert "\n" not in str(err.value)
    weights.write_bytes(b"\x05")
    with pytest.raises(ModelLoadError, match="corrupted or truncated"):
        load_model(folder)


def test_config_that_does_not_match_the_weights(tmp_path):
    folder = save_tiny_model(tmp_path / "m")
    path = folder / "decoder" / "config.json"
    config = json.loads(path.read_text())
    config["config"]["unets"][0]["dim"] = 16  # a wider first unet than the weights hold
    path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"does not match its config.json: .*shape mismatch \(weights vs config\) unets\.0\.") as err:
        load_model(folder)
    assert "\n" not in str(err.value)

    config["config"]["unets"][0]["dim"] = 8
    config["config"]["unets"][0]["dim_mults"] = [1, 2, 2]  # one more level: keys the weights lack
    path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"missing keys unets\.0\..*\(\+\d+ more\)"):
        load_model(folder)

    config["config"]["unets"][0]["bogus_option"] = 1
    path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"is not a valid Decoder config: .*bogus_option"):
        load_model(folder)

    path.write_text(json.dumps({"class": "os.system", "config": {}}))
    with pytest.raises(ModelLoadError, match=r"unknown component class 'os.system'; accepted: .*\bCLIP, "):
        load_model(folder)


def test_failed_write_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    folder = save_tiny_model(tmp_path / "m", seed=0)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    _, new_prior, _ = tiny_modules(seed=1)

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:  # half a file, then the process "dies"
            f.write(b"\x00" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(component, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(folder, prior=new_prior)
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before  # same files, same bytes
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]  # no temporary left behind
    load_model(folder)


def test_atomic_path(tmp_path):
    target = tmp_path / "state.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new, half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["state.pt"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(FileExistsError):
        with atomic_path(target, overwrite=False) as tmp:
            tmp.write_bytes(b"other")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["state.pt"]


def test_written_files_get_the_usual_permissions_not_tempfiles_private_ones(tmp_path):
    old = os.umask(0o022)
    try:
        folder = save_tiny_model(tmp_path / "m")
        with atomic_path(tmp_path / "image.png") as tmp:
            tmp.write_bytes(b"png")
    finally:
        os.umask(old)
    assert (tmp_path / "image.png").stat().st_mode & 0o777 == 0o644
    for path in [folder, *folder.rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path


def test_swap_cut_between_renames_is_recovered(tmp_path):
    folder = save_tiny_model(tmp_path / "m")
    # a save that renamed the old prior aside and died before moving the new one in
    _, prior, _ = tiny_modules(seed=0)
    os.rename(folder / "prior", folder / ".prior.old-deadbeef")
    model = load_model(folder)
    # the prior that was set aside loads with its own weights (loading only reads: the next save cleans up)
    assert (folder / ".prior.old-deadbeef").is_dir() and not (folder / "prior").exists()
    loaded = model.prior.state_dict()
    for key, value in prior.state_dict().items():
        if not key.startswith("clip."):
            assert torch.equal(loaded[key], value), key


def test_partial_save_keeps_other_components(tmp_path):
    folder = save_tiny_model(tmp_path / "m", seed=0)
    _, _, new_decoder = tiny_modules(seed=3)
    save_model(folder, decoder=new_decoder)  # e.g. a decoder trainer saving its stage
    model = load_model(folder)
    assert json.loads((folder / "model_index.json").read_text())["components"] == ["clip", "prior", "decoder"]
    assert model.defaults.steps == (3, 2)  # kept from the index
    for key, value in new_decoder.state_dict().items():
        if not key.startswith("clip."):
            assert torch.equal(value, model.decoder.state_dict()[key]), key


def test_fast_settings_are_changes_to_the_defaults_and_survive_a_partial_save(tmp_path):
    clip, prior, decoder = tiny_modules()
    folder = save_model(tmp_path / "m", clip=clip, prior=prior, decoder=decoder, defaults=DEFAULTS,
                        fast={"steps": [2, 1], "prior_steps": 2, "spacing": "trailing"})
    # stored as the fields that differ from the defaults, read back as whole settings
    assert json.loads((folder / "model_index.json").read_text())["defaults"]["fast"] == {
        "steps": [2, 1], "prior_steps": 2, "spacing": "trailing"}
    index = read_index(folder)
    assert index.fast == SamplingSettings(steps=(2, 1), prior_steps=2, cond_scale=(2.0, 1.0), sampler="ddim", spacing="trailing")
    assert index.defaults == SamplingSettings(steps=(3, 2), prior_steps=3, cond_scale=(2.0, 1.0), sampler="ddim")
    assert load_model(folder).fast == index.fast
    # a save that names no fast settings keeps the folder's changes, over the defaults it writes
    save_model(folder, decoder=tiny_modules(seed=3)[2], defaults={**DEFAULTS, "sampler": "dpmpp"})
    assert read_index(folder).fast == dataclasses.replace(index.fast, sampler="dpmpp")
    # a folder without the entry has none
    assert read_index(save_tiny_model(tmp_path / "plain")).fast is None


@pytest.mark.parametrize(("fast", "on_save", "on_load"), [
    ({"sampler": "euler"}, "sampler 'euler' is unknown", "fast: sampler 'euler' is unknown"),
    ({"stepz": 3}, r"unknown keys \['stepz'\]", r"fast: SamplingSettings: unknown keys \['stepz'\]"),
    ([3], "fast must be a SamplingSettings or a dict of settings, got list", r"fast \[3\] is invalid: expected an object of sampling settings"),
])
def test_invalid_fast_settings_are_refused_on_save_and_on_load(tmp_path, fast, on_save, on_load):
    clip, prior, decoder = tiny_modules()
    with pytest.raises((ValueError, TypeError), match=on_save):
        save_model(tmp_path / "m", clip=clip, prior=prior, decoder=decoder, fast=fast)
    assert not (tmp_path / "m").exists()  # refused before anything is written
    folder = save_tiny_model(tmp_path / "ok")
    index = json.loads((folder / "model_index.json").read_text())
    index["defaults"]["fast"] = fast
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="model_index.json has invalid defaults: " + on_load):
        read_index(folder)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"sampler": "euler"}, "sampler 'euler' is unknown; accepted: ddpm, ddim, dpmpp, dpmpp_sde"),
        ({"cond_scale": (3.0, float("nan"))}, "cond_scale .* guidance scales must be finite numbers >= 0"),
        ({"prior_cond_scale": -1.0}, "prior_cond_scale -1.0 is invalid"),
        ({"steps": 0}, "steps 0 is invalid: steps must be integers >= 1"),
        ({"prior_samples": 0}, "prior_samples 0 is invalid"),
    ],
)
def test_sampling_defaults_are_validated(bad, message):
    with pytest.raises(ValueError, match=message):
        SamplingSettings.build(**bad)


def test_clip_inside_a_prior_is_written_only_when_missing(tmp_path):
    clip, prior, _ = tiny_modules()
    folder = save_model(tmp_path / "m", prior=prior)  # the CLIP comes from inside the prior
    assert json.loads((folder / "model_index.json").read_text())["components"] == ["clip", "prior"]
    clip_file = folder / "clip" / "model.safetensors"
    stamp = clip_file.stat().st_mtime_ns
    save_model(folder, prior=prior)  # a later save: the frozen CLIP is already there
    assert clip_file.stat().st_mtime_ns == stamp
    model = load_model(folder)
    _assert_same_state(clip, model.clip)
    _assert_same_state(prior, model.prior)
