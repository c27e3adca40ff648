"""LAION import: pickles never run code, bad files and configs fail with one clear line, `dream convert`, `--model laion`."""

import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from helpers.cli_helpers import dream

from dalle2_core.convert import UnsafeCheckpointError, load_checkpoint
from dalle2_core.convert.safe_load import PickledRecord, version_string
from dalle2_core.families.unclip.laion import convert_laion
from dalle2_core.families.unclip.laion_keys import rename_layernorm_gamma, unet_key
from dalle2_core.hub import ModelNotFoundError, resolve_model

FIXTURES = Path(__file__).parents[1] / "fixtures" / "laion"
FILES = {name: FIXTURES / f"{name}.{'json' if name.endswith('config') else 'pth'}"
         for name in ("prior", "prior_config", "decoder", "upsampler", "upsampler_config")}


class RunsACommand:
    """Unpickling this would run `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Evaluates:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


def test_a_crafted_torch_file_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "latest.pth"
    torch.save({"net.x": torch.zeros(2), "payload": RunsACommand(marker)}, evil)  # a zip checkpoint like LAION's
    with pytest.raises(UnsafeCheckpointError, match=r"refused to load .*latest.pth: its pickle asks for (posix|os|nt)\.system"):
        load_checkpoint(evil)
    # through the converter and the CLI: same refusal, no output folder, no marker
    with pytest.raises(UnsafeCheckpointError, match="nothing from the file was executed"):
        convert_laion({**FILES, "prior": evil}, tmp_path / "out")
    result = dream("convert", "laion", "--prior", evil, "--prior-config", FILES["prior_config"],
                   "--decoder", FILES["decoder"], "--out", tmp_path / "out2")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: refused to load")
    assert not marker.exists() and not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_raw_pickles_with_code_are_refused(tmp_path, protocol):
    marker = tmp_path / "MARKER"
    for i, payload in enumerate((RunsACommand(marker), Evaluates(marker))):
        path = tmp_path / f"evil{i}.pkl"
        path.write_bytes(pickle.dumps({"model": payload}, protocol=protocol))
        # protocol 2: the refused global is named; newer protocols stop at their first opcode
        with pytest.raises(ValueError, match=r"asks for (posix\.system|os\.system|eval)|safe loader stopped"):
            load_checkpoint(path)
    assert not marker.exists()


def test_unreadable_files_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pth is not a readable PyTorch checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="prior.pth is not a decoder checkpoint|is not a LAION decoder file"):
        convert_laion({**FILES, "decoder": FILES["prior"]}, tmp_path / "out")


def test_the_pickled_package_version_is_an_inert_record():
    obj = load_checkpoint(FILES["decoder"])
    assert isinstance(obj["version"], PickledRecord) and obj["version"].pickled_name == "packaging.version.Version"
    assert version_string(obj["version"]) == "1.1.0"
    assert obj["config"]["decoder"]["image_sizes"] == [16]
    assert obj["model"]["unets.0.to_out.weight"].dtype == torch.float16


def _resave(path: Path, change) -> Path:
    obj = load_checkpoint(path)
    state = obj["model"] if "model" in obj else obj
    change(state)
    out = path.parent / f"changed-{path.name}"
    torch.save(obj, out)
    return out


def test_files_that_do_not_fit_their_config_name_what_is_wrong(tmp_path):
    def copy(name):
        target = tmp_path / FILES[name].name
        target.write_bytes(FILES[name].read_bytes())
        return target

    prior = copy("prior")
    wrong_width = _resave(prior, lambda s: s.__setitem__("net.learned_query", torch.zeros(24)))
    with pytest.raises(ValueError, match=r"shape mismatch \(file vs config\) learned_query \(24,\) vs \(16,\)"):
        convert_laion({**FILES, "prior": wrong_width}, tmp_path / "a")
    biased = _resave(prior, lambda s: s.__setitem__("net.causal_transformer.norm.beta", torch.ones(16)))
    with pytest.raises(ValueError, match="LayerNorm bias net.causal_transformer.norm.beta|causal_transformer.norm.beta is non-zero"):
        convert_laion({**FILES, "prior": biased}, tmp_path / "b")
    upsampler = copy("upsampler")
    schedule = _resave(upsampler, lambda s: s.__setitem__("noise_schedulers.1.betas", torch.full((100,), 0.01)))
    with pytest.raises(ValueError, match="upsampler's noise schedule has 100 steps but the decoder's has 1000"):
        convert_laion({**FILES, "upsampler": schedule}, tmp_path / "c")
    extra = _resave(upsampler, lambda s: s.__setitem__("unets.1.surprise", torch.zeros(1)))
    with pytest.raises(ValueError, match="unexpected keys surprise"):
        convert_laion({**FILES, "upsampler": extra}, tmp_path / "d")
    config = tmp_path / "prior_config.json"
    config.write_text(FILES["prior_config"].read_text().replace('"normformer"', '"flash_attn": true, "normformer"'))
    with pytest.raises(ValueError, match=r"prior config 'net' has option\(s\) 'flash_attn'"):
        convert_laion({**FILES, "prior_config": config}, tmp_path / "e")
    with pytest.raises(ValueError, match="upsampler needs both"):
        convert_laion({k: v for k, v in FILES.items() if k != "upsampler_config"}, tmp_path / "f")
    assert not any((tmp_path / d).exists() for d in "abcdef")


def test_key_names_of_the_1_1_0_era():
    assert unet_key("downs.1.2.0.cross_attn.fn.to_q.weight") == "downs.1.resnet_blocks.0.cross_attn.attn.to_q.weight"
    assert unet_key("downs.0.3.fn.to_qkv.weight") == "downs.0.attn.to_qkv.weight"  # Residual(LinearAttention)
    assert unet_key("downs.2.3.fn.fn.to_out.1.g") == "downs.2.attn.attn.to_out.1.weight"  # full attention
    assert unet_key("mid_attn.fn.fn.null_kv") == "mid_attn.attn.null_kv"
    assert unet_key("ups.0.3.net.0.weight") == "ups.0.upsample.net.0.weight"
    assert unet_key("downs.3.4.weight") == "downs.3.post_downsample.weight"
    state = {"a.gamma": torch.full((3,), 2.0), "a.beta": torch.zeros(3), "b.g": torch.ones(3)}
    assert set(rename_layernorm_gamma(state, "x")) == {"a.g", "b.g"}


def test_cli_convert_writes_a_folder_that_names_the_openai_clip(tmp_path):
    out = tmp_path / "laion"
    result = dream("convert", "laion", "--prior", FILES["prior"], "--prior-config", FILES["prior_config"],
                   "--decoder", FILES["decoder"], "--upsampler", FILES["upsampler"],
                   "--upsampler-config", FILES["upsampler_config"], "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert result.stderr.count("Note: ") == 3
    clip = (out / "clip" / "config.json").read_text()
    assert '"OpenClipAdapter"' in clip and '"ViT-L-14"' in clip and '"openai"' in clip
    assert not (out / "clip" / "model.safetensors").exists()  # weights come from open_clip's cache
    again = dream("convert", "laion", "--prior", FILES["prior"], "--prior-config", FILES["prior_config"],
                  "--decoder", FILES["decoder"], "--out", out)
    assert again.exit_code == 1 and "is not empty" in again.stderr
    half = dream("convert", "laion", "--prior", FILES["prior"], "--prior-config", FILES["prior_config"],
                 "--decoder", FILES["decoder"], "--upsampler", FILES["upsampler"], "--out", tmp_path / "x")
    assert half.exit_code == 2 and "--upsampler and --upsampler-config go together" in half.stderr


def fixture_pins(presets) -> dict:
    """The presets' LAION pins with the prior's published sha256 replaced by the fixture's (its commits stay)."""
    prior = hashlib.sha256(FILES["prior"].read_bytes()).hexdigest()
    return dict(presets.LAION_FILES, prior=presets.LAION_FILES["prior"]._replace(sha256=prior))


def test_model_laion_downloads_once_converts_once_and_reuses(tmp_path, monkeypatch):
    import huggingface_hub

    from dalle2_core.families.unclip import preset as presets

    calls = []
    by_file = {pin.filename: FILES[key] for key, pin in presets.LAION_FILES.items()}

    def fake_download(repo_id, filename, revision=None, **kwargs):
        calls.append((repo_id, filename, revision))
        return str(by_file[filename])

    monkeypatch.setenv("DREAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(presets, "LAION_FILES", fixture_pins(presets))
    first = resolve_model("laion")
    assert first.path == tmp_path / "cache" / "models" / "laion" and first.source == "preset"
    assert sorted(calls) == sorted((pin.repo, pin.filename, pin.revision) for pin in presets.LAION_FILES.values())
    assert (first.path / "conversion.json").is_file() and (first.path / "decoder" / "model.safetensors").is_file()
    source = json.loads((first.path / "source.json").read_text())["files"]
    assert source["decoder"]["sha256"] == hashlib.sha256(FILES["decoder"].read_bytes()).hexdigest()
    second = resolve_model("laion")
    assert second.path == first.path and len(calls) == len(presets.LAION_FILES)  # nothing downloaded or converted again


def test_model_laion_refuses_a_file_whose_sha256_is_not_the_pinned_one(tmp_path, monkeypatch):
    import huggingface_hub

    from dalle2_core.families.unclip import preset as presets

    by_file = {pin.filename: FILES[key] for key, pin in presets.LAION_FILES.items()}
    monkeypatch.setenv("DREAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename, **kw: str(by_file[filename]))
    pins = fixture_pins(presets)
    monkeypatch.setattr(presets, "LAION_FILES", dict(pins, decoder=pins["decoder"]._replace(sha256="0" * 64)))
    digest = hashlib.sha256(FILES["decoder"].read_bytes()).hexdigest()
    with pytest.raises(ModelNotFoundError, match=(
        rf"^LAION file laion/DALLE2-PyTorch/decoder/v1\.0\.2/latest\.pth at commit bab7ed655b7fd637b698d4e3c189e3d9bacce43d "
        rf"has sha256 {digest}, not the pinned 0{{64}}: .* nothing was converted"
    )):
        resolve_model("laion")
    assert not (tmp_path / "cache" / "models" / "laion").exists()


def test_model_laion_offline_without_the_files_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="LAION file laion/DALLE2-PyTorch/prior/latest.pth is not in the local"):
        resolve_model("laion", cache_dir=tmp_path / "hf")
    assert not (tmp_path / "cache" / "models" / "laion").exists()


def test_decoder_options_follow_1_1_0_casts_and_refuse_what_cannot_be_reproduced():
    from dalle2_core.families.unclip.laion_config import Notes, decoder_options, stage_options, unet_config

    unet = dict(dim=8, cond_dim=8, image_embed_dim=16, dim_mults=[1, 2], attend_at_middle=False, self_attn=[0, 1])
    opts = decoder_options({"unets": [unet, unet], "learned_variance": True, "beta_schedule": None}, "cfg")
    first, second = stage_options(opts, 0, 2), stage_options(opts, 1, 2)
    # 1.1.0: a bare learned_variance=True is the first unet only; no schedule means cosine then linear
    assert (first["learned_variance"], second["learned_variance"]) == (True, False)
    assert (first["beta_schedule"], second["beta_schedule"]) == ("cosine", "linear")
    assert (first["use_blur_for_lowres_cond"], second["use_blur_for_lowres_cond"]) == (False, True)
    notes = Notes()
    config = unet_config(unet, index=0, stage=first, unconditional=False, what="unet 1", notes=notes)
    assert config.attention.attend_at_middle and config.attention.self_attn == (False, True)
    assert config.conditioning.cond_on_image_embeds and config.resolved_channels_out == 6
    assert "attend_at_middle=False ignored" in notes.lines[0]
    upsampler = unet_config(unet, index=1, stage=second, unconditional=False, what="unet 2", notes=notes)
    assert upsampler.conditioning.lowres_cond and not upsampler.conditioning.cond_on_image_embeds
    with pytest.raises(ValueError, match="supports only pixel-space stages"):
        decoder_options({"unets": [unet], "vae": [{"layers": 2}]}, "cfg")
    with pytest.raises(ValueError, match="combine_upsample_fmaps"):
        unet_config(dict(unet, combine_upsample_fmaps=True), index=0, stage=first, unconditional=False, what="u", notes=notes)
    with pytest.raises(ValueError, match="image_embed_dim equal to cond_dim"):
        unet_config(dict(unet, image_embed_dim=8), index=0, stage=first, unconditional=False, what="u", notes=notes)
    with pytest.raises(ValueError, match=r"has option\(s\) 'use_flash'"):
        unet_config(dict(unet, use_flash=True), index=0, stage=first, unconditional=False, what="u", notes=notes)
