"""Reading diffusers pipeline folders and filling meta-built modules from memory-mapped safetensors."""

import json
import math
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dalle2_core.convert.diffusers_folder import (
    DiffusersFolderError,
    PickleWeightsRefused,
    open_weights,
    pipeline_class,
    read_diffusers_folder,
    weight_files,
)
from dalle2_core.convert.materialize import (
    Drop,
    Keep,
    Rule,
    SafetensorsWeights,
    WeightsError,
    build_on_meta,
    materialize,
    rename,
)


class Tiny(nn.Module):
    """Linear, LayerNorm, embedding, a persistent buffer and a non-persistent one computed at build."""

    def __init__(self, dim: int = 8, tied: bool = False):
        super().__init__()
        self.embed = nn.Embedding(10, dim)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, 10)
        if tied:
            self.proj.weight = self.embed.weight
        self.register_buffer("scale", torch.full((dim,), 0.5))
        freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2) / (dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)
        self.register_buffer("steps", torch.arange(4), persistent=False)

    def forward(self, ids):
        x = self.norm(self.embed(ids)) * self.scale
        return self.proj(x + torch.cat([self.freqs.sin(), self.freqs.cos()]))


def random_state(module: nn.Module, seed: int = 0, dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g).to(dtype) for k, v in module.state_dict().items()}


def normal_load(state, dtype=None) -> Tiny:
    torch.manual_seed(1)
    module = Tiny()
    module.load_state_dict(state)
    return module.to(dtype=dtype) if dtype else module


def assert_same(a: nn.Module, b: nn.Module) -> None:
    sa = dict(a.named_parameters()) | dict(a.named_buffers())
    sb = dict(b.named_parameters()) | dict(b.named_buffers())
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].device == sb[k].device, k
        assert torch.equal(sa[k], sb[k]), k


def file_mappings(path: Path) -> list[tuple[int, int]]:
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path.resolve())):
            lo, hi = line.split()[0].split("-")
            ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


def test_materialize_equals_a_normal_load_bit_for_bit(tmp_path):
    state = random_state(Tiny())
    save_file(state, tmp_path / "w.safetensors")
    with SafetensorsWeights([tmp_path / "w.safetensors"]) as weights:
        loaded = materialize(Tiny, weights)
    assert_same(loaded, normal_load(load_file(tmp_path / "w.safetensors")))
    ids = torch.tensor([[1, 2, 9]])
    torch.testing.assert_close(loaded(ids), normal_load(state)(ids), rtol=0, atol=0)
    # float32 into float32 on CPU: the parameters are views of the mapped file, not copies
    maps = file_mappings(tmp_path / "w.safetensors")
    if Path("/proc/self/maps").exists():
        assert maps and all(any(lo <= p.data_ptr() < hi for lo, hi in maps) for p in loaded.parameters())


@pytest.mark.parametrize("file_dtype, dtype", [(torch.float32, torch.float16), (torch.float16, None), (torch.bfloat16, torch.float64)])
def test_materialize_casts_each_tensor_like_load_then_to(tmp_path, file_dtype, dtype):
    state = random_state(Tiny(), seed=2, dtype=file_dtype)
    save_file(state, tmp_path / "w.safetensors")
    with SafetensorsWeights([tmp_path / "w.safetensors"]) as weights:
        loaded = materialize(Tiny, weights, dtype=dtype)
    expected = normal_load(load_file(tmp_path / "w.safetensors"), dtype)
    assert_same(loaded, expected)
    assert loaded.proj.weight.dtype == (dtype or torch.float32) and loaded.steps.dtype == torch.long


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory maps")
def test_cast_tensors_do_not_keep_the_file_mapped(tmp_path):
    save_file(random_state(Tiny(), seed=7), tmp_path / "w.safetensors")
    with SafetensorsWeights([tmp_path / "w.safetensors"]) as weights:
        half = materialize(Tiny, weights, dtype=torch.float16)
        assert len(file_mappings(tmp_path / "w.safetensors")) == 1  # the open handle's own map
    # each cast tensor was read through a map of its own, released with the float32 original
    assert file_mappings(tmp_path / "w.safetensors") == [] and half.proj.weight.dtype == torch.float16


def test_non_persistent_buffers_hold_their_built_values():
    state = random_state(Tiny(), seed=3)
    loaded = materialize(Tiny, state, dtype=torch.float16)
    reference = Tiny()
    torch.testing.assert_close(loaded.freqs, reference.freqs.half(), rtol=0, atol=0)
    assert loaded.freqs.dtype == torch.float16 and loaded.freqs[0].item() == 1.0
    assert loaded.steps.tolist() == [0, 1, 2, 3] and loaded.steps.dtype == torch.long
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])


def test_build_on_meta_allocates_no_parameters_and_only_in_its_thread():
    seen = {}

    def build():
        other = threading.Thread(target=lambda: seen.setdefault("other", nn.Linear(3, 3)))
        other.start()
        other.join()
        return Tiny()

    module = build_on_meta(build)
    assert all(p.is_meta for p in module.parameters())
    assert not any(b.is_meta for b in module.buffers()) and module.scale[0].item() == 0.5
    assert not seen["other"].weight.is_meta  # another thread building at the same time is untouched
    assert not nn.Linear(2, 2).weight.is_meta  # and the hook is gone afterwards


def test_tied_parameters_stay_one_parameter():
    source = Tiny(tied=True)
    state = {k: v for k, v in random_state(source, seed=4).items() if k != "proj.weight"}
    state["embed.weight"] = torch.randn(10, 8)
    loaded = materialize(lambda: Tiny(tied=True), state)
    assert loaded.proj.weight is loaded.embed.weight
    assert torch.equal(loaded.proj.weight, state["embed.weight"])


def test_key_maps_rename_combine_drop_and_keep():
    state = random_state(Tiny(), seed=5)
    source = {f"m.{k}": v for k, v in state.items() if k not in ("norm.weight", "scale")}
    source["m.norm.weight.a"], source["m.norm.weight.b"] = state["norm.weight"][:4], state["norm.weight"][4:]
    source["m.position_ids"] = torch.arange(7)[None]
    key_map = [rename(f"m.{k}", k) for k in ("embed.weight", "norm.bias", "proj.weight", "proj.bias")]
    key_map += [Rule("norm.weight", ("m.norm.weight.a", "m.norm.weight.b"), lambda a, b: torch.cat([a, b])), Keep("scale")]
    key_map += [Drop("m.position_ids", lambda t: None if t.shape == (1, 7) else "bad"), Drop("m.absent", optional=True)]
    loaded = materialize(Tiny, source, key_map)
    assert torch.equal(loaded.norm.weight, state["norm.weight"]) and loaded.scale[0].item() == 0.5
    torch.testing.assert_close(loaded.embed.weight, state["embed.weight"], rtol=0, atol=0)


def test_key_map_problems_are_one_line_and_name_the_tensor():
    state = random_state(Tiny(), seed=6)
    bad = dict(state, **{"proj.weight": torch.zeros(10, 9)})
    with pytest.raises(WeightsError, match=r"^tiny: tensor 'proj\.weight' has shape \(10, 9\); 'proj\.weight' of the module has shape \(10, 8\)$"):
        materialize(Tiny, bad, what="tiny")
    fused = [rename(k, k) for k in state if k != "norm.weight"]
    fused.append(Rule("norm.weight", ("norm.weight",), lambda t: torch.cat([t, t])))
    with pytest.raises(WeightsError, match=r"tensor\(s\) 'norm\.weight' \(8,\) give \(16,\); 'norm\.weight' of the module has shape \(8,\)"):
        materialize(Tiny, state, fused)
    extra = dict(state, stray=torch.zeros(1))
    with pytest.raises(WeightsError, match=r"unexpected tensor\(s\) stray$"):
        materialize(Tiny, extra)
    fewer = {k: v for k, v in state.items() if k != "scale"}
    with pytest.raises(WeightsError, match=r"nothing fills scale$"):
        materialize(Tiny, fewer)
    with pytest.raises(WeightsError, match=r"missing tensor\(s\) gone; the module has no gone"):
        materialize(Tiny, state, [*(rename(k, k) for k in state), rename("gone", "gone")])
    with pytest.raises(WeightsError, match=r"uses source tensor\(s\) scale more than once"):
        materialize(Tiny, state, [*(rename(k, k) for k in state), Drop("scale")])
    checked = [*(rename(k, k) for k in state), Drop("ids", lambda t: None if t.sum() == 0 else "is not all zero")]
    with pytest.raises(WeightsError, match=r"^state dict: tensor 'ids' is not all zero$"):
        materialize(Tiny, dict(state, ids=torch.ones(3)), checked)


# --- folders ---------------------------------------------------------------------------------------------


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def unclip_folder(root: Path) -> Path:
    """A diffusers UnCLIPPipeline layout with tiny stand-in tensors."""
    write_json(root / "model_index.json", {
        "_class_name": "UnCLIPPipeline", "_diffusers_version": "0.12.0.dev0",
        "prior": ["diffusers", "PriorTransformer"], "text_proj": ["unclip", "UnCLIPTextProjModel"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "prior_scheduler": ["diffusers", "UnCLIPScheduler"], "safety_checker": [None, None],
    })
    write_json(root / "prior" / "config.json", {"_class_name": "PriorTransformer", "num_layers": 20})
    save_file({"w": torch.ones(2)}, root / "prior" / "diffusion_pytorch_model.safetensors")
    save_file({"w": torch.ones(2).half()}, root / "prior" / "diffusion_pytorch_model.fp16.safetensors")
    (root / "prior" / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    write_json(root / "text_proj" / "config.json", {"_class_name": "UnCLIPTextProjModel"})
    (root / "text_proj" / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    write_json(root / "text_encoder" / "config.json", {"model_type": "clip_text_model"})
    save_file({"a": torch.zeros(3)}, root / "text_encoder" / "model-00001-of-00002.safetensors")
    save_file({"b": torch.ones(1)}, root / "text_encoder" / "model-00002-of-00002.safetensors")
    write_json(root / "text_encoder" / "model.safetensors.index.json", {
        "metadata": {"total_size": 16}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    })
    write_json(root / "tokenizer" / "tokenizer_config.json", {"model_max_length": 77, "pad_token": "!"})
    write_json(root / "prior_scheduler" / "scheduler_config.json", {"_class_name": "UnCLIPScheduler", "variance_type": "fixed_small_log"})
    return root


def test_reads_model_index_components_and_configs(tmp_path):
    folder = read_diffusers_folder(unclip_folder(tmp_path / "karlo"), expect=("UnCLIPPipeline", "UnCLIPImageVariationPipeline"))
    assert folder.class_name == "UnCLIPPipeline" and folder.diffusers_version == "0.12.0.dev0"
    assert list(folder.components) == ["prior", "text_proj", "text_encoder", "tokenizer", "prior_scheduler"]
    assert (folder["text_proj"].library, folder["text_proj"].class_name) == ("unclip", "UnCLIPTextProjModel")
    assert folder["prior"].config()["num_layers"] == 20
    assert folder["prior_scheduler"].config()["variance_type"] == "fixed_small_log"
    assert folder["tokenizer"].config()["pad_token"] == "!"
    assert pipeline_class(tmp_path / "karlo") == "UnCLIPPipeline" and pipeline_class(tmp_path) is None
    with pytest.raises(DiffusersFolderError, match=r"has no component 'decoder'; it has: prior, text_proj, text_encoder"):
        folder["decoder"]
    with pytest.raises(DiffusersFolderError, match=r"holds a UnCLIPPipeline; expected StableDiffusionPipeline$"):
        read_diffusers_folder(tmp_path / "karlo", expect="StableDiffusionPipeline")


def test_weight_files_plain_variant_and_shards(tmp_path):
    folder = read_diffusers_folder(unclip_folder(tmp_path / "karlo"))
    assert [p.name for p in folder["prior"].weight_files()] == ["diffusion_pytorch_model.safetensors"]
    with folder["prior"].open_weights("fp16") as weights:
        assert weights.dtype("w") == torch.float16 and weights.get("w").tolist() == [1.0, 1.0]
    with folder["text_encoder"].open_weights() as weights:
        assert sorted(weights.keys()) == ["a", "b"] and weights.shape("a") == (3,)
    with pytest.raises(DiffusersFolderError, match=r"component 'text_encoder' has no fp16 variant safetensors weights"):
        folder["text_encoder"].weight_files("fp16")


def test_pickle_only_components_are_refused_without_opening_them(tmp_path):
    folder = read_diffusers_folder(unclip_folder(tmp_path / "karlo"))
    with pytest.raises(PickleWeightsRefused, match=(
        r"^component 'text_proj' has only pickled weights \(diffusion_pytorch_model\.bin\); pickles are never opened "
        r"\(they can run code\): it needs diffusion_pytorch_model\.safetensors or model\.safetensors$"
    )):
        folder["text_proj"].open_weights()


def test_broken_shard_indices_and_competing_weights(tmp_path):
    root = unclip_folder(tmp_path / "karlo")
    index = root / "text_encoder" / "model.safetensors.index.json"
    write_json(index, {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00003-of-00002.safetensors"}})
    with pytest.raises(DiffusersFolderError, match=r"shard\(s\) model-00003-of-00002\.safetensors listed in model\.safetensors\.index\.json are missing"):
        weight_files(root / "text_encoder")
    write_json(index, {"weight_map": {"a": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}})
    with pytest.raises(WeightsError, match=r"lists 2 tensors but its shards hold 2 \(differ in b, c\)"):
        open_weights(root / "text_encoder")
    write_json(index, {"weight_map": {"a": "../prior/diffusion_pytorch_model.bin"}})
    with pytest.raises(DiffusersFolderError, match=r"names '\.\./prior/diffusion_pytorch_model\.bin'; only \.safetensors files beside it"):
        weight_files(root / "text_encoder")
    save_file({"w": torch.ones(1)}, root / "prior" / "model.safetensors")
    with pytest.raises(DiffusersFolderError, match=r"two weight sets \(diffusion_pytorch_model\.safetensors, model\.safetensors\)"):
        weight_files(root / "prior")


def test_not_a_pipeline_folder(tmp_path):
    write_json(tmp_path / "dream" / "model_index.json", {"format": "dream-model", "version": 1})
    with pytest.raises(DiffusersFolderError, match=r"has no '_class_name': not a diffusers pipeline folder"):
        read_diffusers_folder(tmp_path / "dream")
    with pytest.raises(DiffusersFolderError, match=r"model_index\.json does not exist; expected a diffusers pipeline index"):
        read_diffusers_folder(tmp_path / "nowhere")
    write_json(tmp_path / "partial" / "model_index.json", {"_class_name": "UnCLIPPipeline", "prior": ["diffusers", "PriorTransformer"]})
    with pytest.raises(DiffusersFolderError, match=r"lists component 'prior' \(diffusers\.PriorTransformer\) but .* is missing"):
        read_diffusers_folder(tmp_path / "partial")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(WeightsError, match=r"bad\.safetensors is not a readable safetensors file"):
        SafetensorsWeights([tmp_path / "bad.safetensors"])
