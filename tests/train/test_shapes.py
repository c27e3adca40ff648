"""The shapes world: splits, captions, rendering, the adherence evaluator and `dream data shapes`."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageFilter

from dalle2_core.shapes import (
    ATTRIBUTES,
    COLORS,
    HELD_OUT_PAIRS,
    PALETTE,
    PHRASINGS,
    POSITIONS,
    Composition,
    all_compositions,
    compositions,
    eval_prompts,
    generate,
    parse_caption,
    read_attributes,
    render,
    sample_compositions,
    score,
)
from dalle2_core.shapes.world import WHERE, object_mask
from dream_cli.cli import cli

# --- splits -----------------------------------------------------------------------------------------


def test_splits_are_disjoint_and_cover_the_world():
    everything, seen, held = all_compositions(), compositions("seen"), compositions("held")
    assert len(everything) == len(set(everything)) == 1680
    assert len(held) == 3 * 2 * 5 * 7 == 210
    assert len(seen) == 1680 - 210 == 1470
    assert not set(seen) & set(held)
    assert set(seen) | set(held) == set(everything)
    assert {(c.color, c.shape) for c in held} == HELD_OUT_PAIRS
    assert all(c.color != c.background for c in everything)


def test_seen_sampling_is_uniform_and_never_held():
    drawn = Counter(sample_compositions(1470 * 20, "seen", rng=0))
    assert set(drawn) == set(compositions("seen"))  # every seen composition appears, no held one
    counts = np.array(list(drawn.values()))
    assert counts.mean() == 20
    assert 5 <= counts.min() and counts.max() <= 40  # Poisson(20) spread, not a skewed sampler
    held = sample_compositions(500, "held", rng=1)
    assert all((c.color, c.shape) in HELD_OUT_PAIRS for c in held)


def test_bad_compositions_and_splits_are_refused():
    with pytest.raises(ValueError, match="must differ"):
        Composition("red", "circle", "small", "center", "red")
    with pytest.raises(ValueError, match="unknown color 'pink'; accepted: red, green"):
        Composition("pink", "circle", "small", "center", "red")
    with pytest.raises(ValueError, match="unknown split 'train'; accepted: seen, held"):
        compositions("train")


# --- captions ---------------------------------------------------------------------------------------


def test_canonical_caption():
    c = Composition("red", "circle", "small", "center", "blue")
    assert c.caption() == "a small red circle in the center on a blue background"
    assert Composition("orange", "triangle", "large", "top", "white").caption(0) == (
        "a large orange triangle at the top on a white background"
    )


def test_every_phrasing_names_all_five_attributes_and_parses_back():
    assert len(PHRASINGS) >= 3
    for c in all_compositions():
        texts = {c.caption(i) for i in range(len(PHRASINGS))}
        assert len(texts) == len(PHRASINGS)
        for text in texts:
            words = text.replace(",", " ").replace(";", " ").split()
            assert c.size in words and c.color in words and c.shape in words and c.background in words
            assert WHERE[c.position] in text
            assert parse_caption(text) == c
    with pytest.raises(ValueError, match="not in any shapes-world phrasing"):
        parse_caption("a dog")


def test_generated_phrasings_vary_per_image():
    used = Counter(next(i for i in range(len(PHRASINGS)) if s.composition.caption(i) == s.caption)
                   for s in generate(200, "seen", seed=0))
    assert set(used) == set(range(len(PHRASINGS)))
    assert min(used.values()) >= 30  # roughly 50 each


# --- rendering ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,size,side,fill", [
    ("square", "small", 14, 1.0), ("square", "large", 28, 1.0),
    ("circle", "small", 14, 0.796), ("circle", "large", 28, 0.786),
    ("triangle", "small", 14, 0.571), ("triangle", "large", 28, 0.536),
])
def test_render_geometry(shape, size, side, fill):
    c = Composition("yellow", shape, size, "right", "black")
    pixels = np.asarray(render(c, offset=(-3, 2)))
    assert pixels.shape == (64, 64, 3)
    is_object = (pixels == PALETTE["yellow"]).all(-1)
    assert ((pixels == PALETTE["black"]).all(-1) | is_object).all()  # two flat colours, no blending
    ys, xs = np.nonzero(is_object)
    assert xs.max() - xs.min() + 1 == side and ys.max() - ys.min() + 1 == side
    assert (xs.min() + xs.max() + 1) / 2 == POSITIONS["right"][0] - 3
    assert (ys.min() + ys.max() + 1) / 2 == POSITIONS["right"][1] + 2
    assert is_object.sum() / side**2 == pytest.approx(fill, abs=1e-3)
    if shape == "triangle":  # apex up: the top row is the narrowest, the base the widest
        widths = is_object[ys.min():ys.max() + 1].sum(1)
        assert widths[0] == 2 and widths[-1] == side and (np.diff(widths) >= 0).all()


def test_render_jitter_and_determinism():
    a = [(np.asarray(s.image), s.caption) for s in generate(6, "seen", seed=3)]
    b = [(np.asarray(s.image), s.caption) for s in generate(6, "seen", seed=3)]
    other = [np.asarray(s.image) for s in generate(6, "seen", seed=4)]
    assert all((x == y).all() and cx == cy for (x, cx), (y, cy) in zip(a, b))
    assert any(not (x == y).all() for (x, _), y in zip(a, other))
    # the jitter moves the bounding-box centre by at most 3 px, and covers the whole range
    c = Composition("red", "square", "small", "center", "white")
    rng = np.random.default_rng(0)
    centres = set()
    for _ in range(200):
        ys, xs = np.nonzero((np.asarray(render(c, rng)) == PALETTE["red"]).all(-1))
        centres.add(((xs.min() + xs.max() + 1) / 2 - 32, (ys.min() + ys.max() + 1) / 2 - 32))
    assert {dx for dx, _ in centres} == {dy for _, dy in centres} == set(range(-3, 4))
    with pytest.raises(ValueError, match="exceeds the world's jitter"):
        render(c, offset=(4, 0))


def test_render_other_sizes_scale_the_world():
    c = Composition("blue", "square", "large", "left", "white")
    mask = object_mask(c, size=128)
    ys, xs = np.nonzero(mask)
    assert (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (56, 56)
    assert ((xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2) == (36, 64)
    assert render(c, size=32).size == (32, 32)


# --- evaluator --------------------------------------------------------------------------------------


def test_evaluator_reads_back_every_generated_image():
    seen, held = list(generate(100, "seen", seed=0)), list(generate(100, "held", seed=1))
    samples = seen + held
    for s in samples:
        assert read_attributes(s.image) == s.composition.to_dict()
    report = score([s.image for s in samples], [s.composition for s in samples])
    for split in (report.seen, report.held):
        assert split.n == 100
        assert split.adherence == 1.0
        assert split.accuracy == dict.fromkeys(ATTRIBUTES, 1.0)


def test_evaluator_accepts_captions_tensors_and_other_sizes():
    comps = compositions("held")[::7]  # 30 compositions
    rng = np.random.default_rng(2)
    for size in (48, 128, 200):
        images = [render(c, rng, size=size) for c in comps]
        assert score(images, comps).held.adherence == 1.0
    batch = torch.stack([torch.from_numpy(np.array(render(c, rng))).permute(2, 0, 1) / 255 for c in comps])
    report = score(batch, [c.caption(1) for c in comps])  # (b, 3, h, w) in [0, 1]; captions parsed
    assert report.held.adherence == 1.0 and report.seen.n == 0 and report.seen.adherence is None


def test_evaluator_tolerates_blur_and_noise():
    comps = all_compositions()[::4]  # 420 compositions
    rng = np.random.default_rng(0)
    images = []
    for c in comps:
        img = render(c, rng).filter(ImageFilter.GaussianBlur(1.0))
        noisy = np.asarray(img, dtype=np.float64) + rng.normal(0, 8, (64, 64, 3))
        images.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    report = score(images, comps)
    assert report.seen.adherence >= 0.97 and report.held.adherence >= 0.97
    assert report.seen.accuracy["color"] == report.seen.accuracy["background"] == 1.0
    assert report.seen.accuracy["position"] == report.seen.accuracy["size"] == 1.0


@pytest.mark.parametrize("wrong", [
    dict(color="green"), dict(shape="triangle"), dict(position="left"), dict(size="large"), dict(background="black"),
])
def test_evaluator_reports_a_wrong_image_as_not_adhering(wrong):
    prompt = Composition("red", "circle", "small", "right", "white")
    drawn = Composition(**{**prompt.to_dict(), **wrong})
    report = score([render(drawn, offset=(1, -2))], [prompt])
    (attribute,) = wrong
    assert report.seen.adherence == 0.0
    assert report.seen.accuracy[attribute] == 0.0
    assert sum(report.seen.accuracy.values()) == len(ATTRIBUTES) - 1
    assert report.per_image[0]["read"][attribute] == wrong[attribute]


def test_evaluator_on_an_empty_image_finds_no_object():
    blank = Image.new("RGB", (64, 64), PALETTE["purple"])
    assert read_attributes(blank) == dict(size=None, color=None, shape=None, position=None, background="purple")
    specks = np.array(blank)
    specks[[10, 40, 50], [20, 5, 60]] = PALETTE["white"]  # isolated noise pixels are not an object
    assert read_attributes(specks)["shape"] is None
    with pytest.raises(ValueError, match="3 images but 2 compositions"):
        score([blank] * 3, compositions("seen")[:2])


def test_eval_prompts_are_canonical_deterministic_and_distinct():
    prompts, comps = eval_prompts("held", 50, seed=0)
    assert len(set(prompts)) == 50 and all(c.held_out for c in comps)
    assert prompts == [c.caption(0) for c in comps]
    assert eval_prompts("held", 50, seed=0) == (prompts, comps)
    assert eval_prompts("held", 50, seed=1)[0] != prompts
    all_seen, _ = eval_prompts("seen")
    assert len(all_seen) == 1470 and len(set(all_seen)) == 1470


# --- dream data shapes ------------------------------------------------------------------------------


def test_dream_data_shapes_txt(tmp_path):
    out = tmp_path / "shapes"
    result = CliRunner().invoke(cli, ["data", "shapes", "--out", str(out), "--num", "6", "--seed", "5", "--quiet"])
    assert result.exit_code == 0, result.output
    pngs, txts = sorted(out.glob("*.png")), sorted(out.glob("*.txt"))
    assert [p.stem for p in pngs] == [p.stem for p in txts] == [f"{i:06d}" for i in range(6)]
    expected = list(generate(6, "seen", seed=5))
    for png, txt, sample in zip(pngs, txts, expected):
        assert txt.read_text().strip() == sample.caption
        image = Image.open(png)
        assert image.size == (64, 64) and image.mode == "RGB"
        assert (np.asarray(image) == np.asarray(sample.image)).all()
        assert read_attributes(image) == parse_caption(sample.caption).to_dict()

    again = CliRunner().invoke(cli, ["data", "shapes", "--out", str(out), "--num", "2", "--quiet"])
    assert again.exit_code == 1
    assert "is not empty" in again.output
    assert len(list(out.iterdir())) == 12  # nothing was overwritten or added


def test_dream_data_shapes_jsonl_held(tmp_path):
    out = tmp_path / "held"
    out.mkdir()  # an existing empty folder is fine
    result = CliRunner().invoke(cli, ["data", "shapes", "--out", str(out), "--num", "8",
                                      "--split", "held", "--format", "jsonl", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == [f"{i:06d}.png" for i in range(8)]
    assert sorted(p.name for p in out.glob("*.png")) == [r["file_name"] for r in rows]
    assert not list(out.glob("*.txt"))
    for row in rows:
        comp = parse_caption(row["text"])
        assert comp.held_out and comp.to_dict() == {k: row[k] for k in ATTRIBUTES}
        assert row["color"] in COLORS
