"""`dream eval shapes` on a tiny model folder: JSON fields per split, pairing of prompts and images, errors."""

import json

import numpy as np
import pytest
import torch
from helpers.cli_helpers import dream
from PIL import Image

from dalle2_core.checkpoint import load_model, save_model
from dalle2_core.families.unclip.pipeline import UnclipPipeline
from dalle2_core.shapes import ATTRIBUTES, eval_prompts, parse_caption, read_attributes, render
from dream_cli.output import SETTINGS_CHUNK


def eval_json(model_dir, *args):
    result = dream("eval", "shapes", "--model", model_dir, "-q", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_has_per_split_fields_consistent_with_the_rows(model_dir):
    report = eval_json(model_dir, "--num", 3, "--batch-size", 4, "--seed", 1)
    assert report["num"] == 3 and report["seed"] == 1
    assert report["settings"]["steps"] == [3, 2] and report["settings"]["sampler"] == "ddim"  # model defaults
    rows = report["per_image"]
    assert [r["split"] for r in rows] == ["seen"] * 3 + ["held"] * 3
    for split in ("seen", "held"):
        prompts, comps = eval_prompts(split, 3, seed=1)
        mine = [r for r in rows if r["split"] == split]
        assert [r["prompt"] for r in mine] == prompts
        assert [r["expected"] for r in mine] == [c.to_dict() for c in comps]
        score = report[split]
        assert score["n"] == 3 and set(score["accuracy"]) == set(ATTRIBUTES)
        for a in ATTRIBUTES:
            assert score["accuracy"][a] == pytest.approx(np.mean([r["correct"][a] for r in mine]))
        assert score["adherence"] == pytest.approx(np.mean([r["adheres"] for r in mine]))


def test_same_seed_same_figures_and_options_override_defaults(model_dir):
    a = eval_json(model_dir, "--num", 2, "--steps", 2, "--prior-steps", 2, "--cond-scale", "1.5,1", "--sampler", "ddpm")
    b = eval_json(model_dir, "--num", 2, "--steps", 2, "--prior-steps", 2, "--cond-scale", "1.5,1", "--sampler", "ddpm")
    assert a["settings"]["steps"] == [2, 2] and a["settings"]["prior_steps"] == 2
    assert a["settings"]["cond_scale"] == [1.5, 1.0] and a["settings"]["sampler"] == "ddpm"
    assert [r["read"] for r in a["per_image"]] == [r["read"] for r in b["per_image"]]
    assert a["seen"] == b["seen"] and a["held"] == b["held"]


def test_figures_do_not_depend_on_the_batch_size(model_dir):
    args = ("--num", 3, "--steps", 2, "--prior-steps", 2, "--sampler", "ddpm", "--seed", 4)
    a, b = eval_json(model_dir, *args, "--batch-size", 6), eval_json(model_dir, *args, "--batch-size", 1)
    assert [r["read"] for r in a["per_image"]] == [r["read"] for r in b["per_image"]]


def _perfect_decode(self, image_embed, text, settings, **kwargs):
    """What an ideal model would draw: the composition each prompt names, at 32 px like the tiny model."""
    images = [render(parse_caption(t), size=32) for t in text.text]
    arrays = np.stack([np.asarray(img, dtype=np.float32) / 255 for img in images])  # (b, h, w, 3)
    return torch.from_numpy(arrays).permute(0, 3, 1, 2)  # (b, 3, h, w)


def test_images_are_paired_with_their_own_prompts_across_batches(model_dir, monkeypatch):
    # the decoder replaced by the renderer: every image must score 100 %, so no prompt and image got mixed up
    monkeypatch.setattr(UnclipPipeline, "decode", _perfect_decode)
    report = eval_json(model_dir, "--num", 5, "--batch-size", 3)
    for split in ("seen", "held"):
        assert report[split]["n"] == 5 and report[split]["adherence"] == 1.0
        assert all(v == 1.0 for v in report[split]["accuracy"].values())


def test_table_and_saved_images_match_the_read_back(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(UnclipPipeline, "decode", _perfect_decode)
    result = dream("eval", "shapes", "--model", model_dir, "-q", "--num", 2, "--save-images", tmp_path)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[2].split() == ["split", "n", *ATTRIBUTES, "all", "five"]
    assert lines[3].split() == ["seen", "2"] + ["100.0"] * 6 and lines[4].split() == ["held", "2"] + ["100.0"] * 6
    saved = sorted(tmp_path.glob("*.png"))
    assert len(saved) == 4 and saved[0].name.startswith("held-0002-") and saved[2].name.startswith("seen-0000-")
    for path in saved:
        with Image.open(path) as img:
            info = json.loads(img.text[SETTINGS_CHUNK])
            assert read_attributes(img) == info["read"] == parse_caption(info["prompt"]).to_dict() and info["adheres"]


def test_refusals(model_dir, tmp_path):
    assert dream("eval", "shapes", "--model", model_dir, "--num", 0).exit_code == 2
    assert "no-such-folder" in dream("eval", "shapes", "--model", tmp_path / "no-such-folder").output
    bad = dream("eval", "shapes", "--model", model_dir, "--steps", "1,2,3")
    assert bad.exit_code == 2 and "decoder stage(s)" in bad.output
    model = load_model(model_dir)
    save_model(tmp_path / "no-prior", clip=model.clip, decoder=model.decoder)
    result = dream("eval", "shapes", "--model", tmp_path / "no-prior", "-q")
    assert result.exit_code == 1 and "needs a prior" in result.output
