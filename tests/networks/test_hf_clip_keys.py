"""The full-size ViT-L/14 towers: transformers' names and shapes map onto open_clip's ViT-L-14 exactly (on meta)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dalle2_core.clip.hf_clip_adapter import HFClipAdapter, _transformers_plan
from dalle2_core.convert.hf_clip_keys import text_key_map, transformers_shapes, vision_key_map
from dalle2_core.convert.materialize import NamespacedWeights, TensorDict, WeightsError, build_on_meta, check_key_map

CONFIGS = Path(__file__).parents[1] / "fixtures" / "hf_clip" / "configs"
VIT_L = json.loads((CONFIGS / "openai-clip-vit-large-patch14.json").read_text())
SHAPES = json.loads((CONFIGS / "transformers_state_shapes.json").read_text())  # recorded by transformers itself


def meta_tensors(tower: str) -> dict:
    return {k: torch.empty(shape, dtype=getattr(torch, dtype), device="meta") for k, (shape, dtype) in SHAPES[tower].items()}


def meta_weights(tower: str, extra: dict | None = None) -> TensorDict:
    return TensorDict(meta_tensors(tower) | (extra or {}), what=f"ViT-L/14 {tower} tower")


def tower_folder(root: Path, name: str, tower: str | None = None) -> Path:
    """A folder with the real config (a tower's section as its own config, as Karlo's text_encoder/ has it, or the whole
    CLIPModel's) and a placeholder weights file (planning reads no weights)."""
    root.joinpath(name).mkdir(parents=True)
    config = {**VIT_L[f"{tower}_config"], "projection_dim": VIT_L["projection_dim"]} if tower else VIT_L
    root.joinpath(name, "config.json").write_text(json.dumps(config))
    save_file({"placeholder": torch.zeros(1)}, root / name / "model.safetensors")
    return root / name


def test_our_transformers_layout_is_transformers_own():
    for tower in ("text", "vision"):
        assert transformers_shapes(VIT_L, tower) == {k: tuple(shape) for k, (shape, _) in SHAPES[tower].items()}


def test_vit_l14_maps_onto_open_clip_vit_l_14_without_overrides(tmp_path):
    config, parts, key_map = _transformers_plan(
        tower_folder(tmp_path, "text_encoder", "text"), tower_folder(tmp_path, "image_encoder", "vision"), None, None, "ViT-L-14", None
    )
    assert set(parts) == {"text_encoder/", "image_encoder/"}
    assert config.model_kwargs == {} and config.quick_gelu and config.name == "ViT-L-14"  # open_clip's ViT-L-14 as it is
    adapter = build_on_meta(lambda: HFClipAdapter(config))
    expected = adapter.state_dict()
    old_ids = {  # what Karlo's files, written by transformers before 4.31, also hold
        "text_model.embeddings.position_ids": torch.empty(1, 77, dtype=torch.long, device="meta"),
        "vision_model.embeddings.position_ids": torch.empty(1, 257, dtype=torch.long, device="meta"),
    }
    files = {"text_encoder/": meta_tensors("text") | {k: v for k, v in old_ids.items() if k.startswith("text")},
             "image_encoder/": meta_tensors("vision") | {k: v for k, v in old_ids.items() if k.startswith("vision")}}
    weights = NamespacedWeights({ns: TensorDict(tensors) for ns, tensors in files.items()})
    check_key_map(weights, key_map, expected, "ViT-L/14")  # every tensor used once, every target filled, shapes equal
    numel = {tower: sum(torch.Size(shape).numel() for shape, _ in SHAPES[tower].values()) for tower in ("text", "vision")}
    assert numel == {"text": 123_650_304, "vision": 303_966_208}
    assert sum(p.numel() for p in adapter.text.parameters()) == numel["text"]
    assert sum(p.numel() for p in adapter.visual.parameters()) == numel["vision"]
    assert adapter.text.attn_mask.shape == (77, 77) and not adapter.text.attn_mask.is_meta


def test_the_vision_tower_of_a_whole_clip_model_file(tmp_path):
    """openai/clip-vit-large-patch14's model.safetensors (both towers, logit_scale, old position_ids) for the vision
    tower beside Karlo's text encoder: the rest of that file is read and dropped; the same folder for both towers
    fills both from one file."""
    whole = meta_tensors("text") | meta_tensors("vision") | {
        "logit_scale": torch.empty((), device="meta"),
        "text_model.embeddings.position_ids": torch.empty(1, 77, dtype=torch.long, device="meta"),
        "vision_model.embeddings.position_ids": torch.empty(1, 257, dtype=torch.long, device="meta"),
    }
    clip_folder = tower_folder(tmp_path, "clip")
    config, parts, key_map = _transformers_plan(tower_folder(tmp_path, "text_encoder", "text"), clip_folder, None, None,
                                                "ViT-L-14", None)
    assert config.model_kwargs == {} and config.text and config.vision and set(parts) == {"text_encoder/", "image_encoder/"}
    weights = NamespacedWeights({"text_encoder/": TensorDict(meta_tensors("text")), "image_encoder/": TensorDict(whole)})
    check_key_map(weights, key_map, build_on_meta(lambda: HFClipAdapter(config)).state_dict(), "Karlo + ViT-L/14")
    config, parts, key_map = _transformers_plan(clip_folder, clip_folder, None, None, "ViT-L-14", None)
    assert list(parts) == [""] and len(parts[""][1]) == 1
    check_key_map(TensorDict(whole), key_map, build_on_meta(lambda: HFClipAdapter(config)).state_dict(), "ViT-L/14")
    config, _, key_map = _transformers_plan(None, clip_folder, None, None, "ViT-L-14", None)
    vision_only = build_on_meta(lambda: HFClipAdapter(config)).state_dict()
    check_key_map(TensorDict(whole), key_map, vision_only, "vision of ViT-L/14")
    with pytest.raises(WeightsError, match=r"missing tensor\(s\) logit_scale$"):
        check_key_map(TensorDict({k: v for k, v in whole.items() if k != "logit_scale"}), key_map, vision_only, "vision of ViT-L/14")


def test_each_tower_alone_and_a_wrong_layer_count(tmp_path):
    text = build_on_meta(lambda: HFClipAdapter(vision=False))
    check_key_map(meta_weights("text"), text_key_map(12, "text."), text.state_dict(), "text")
    vision = build_on_meta(lambda: HFClipAdapter(text=False))
    check_key_map(meta_weights("vision"), vision_key_map(24, "visual."), vision.state_dict(), "vision")
    with pytest.raises(WeightsError, match=r"^vision: missing tensor\(s\) vision_model\.encoder\.layers\.24\.layer_norm1\.bias"):
        check_key_map(meta_weights("vision"), vision_key_map(25, "visual."), vision.state_dict(), "vision")
    with pytest.raises(WeightsError, match=r"unexpected tensor\(s\) vision_model\.encoder\.layers\.23\..*nothing fills visual\.transformer\.resblocks\.23\."):
        check_key_map(meta_weights("vision"), vision_key_map(23, "visual."), vision.state_dict(), "vision")
    wide = {"text_projection.weight": torch.empty(512, 768, device="meta")}
    with pytest.raises(WeightsError, match=r"'text_projection\.weight' \(512, 768\) give \(768, 512\); 'text\.text_projection' of the module has shape \(768, 768\)"):
        check_key_map(meta_weights("text", wide), text_key_map(12, "text."), text.state_dict(), "text")
