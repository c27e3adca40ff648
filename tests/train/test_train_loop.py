"""`dream train` on a tiny synthetic folder: every stage, resume after a crash, bad data, NaN stop."""


import pytest
import torch
from click.testing import CliRunner
from helpers.train_data import TINY, write_config, write_folder
from PIL import Image
from safetensors.torch import load_file

from dalle2_core import checkpoint
from dalle2_core.train.loop import TrainingError, TrainSettings, train
from dream_cli.cli import cli


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("shapes"), 16)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("cfg") / "tiny.json", TINY)


def _settings(data, out, config, **kw):
    base = dict(data=data, out=out, image_size=32, steps=2, batch_size=4, save_every=1, config=config, seed=3)
    return TrainSettings(**{**base, **kw})


def test_every_stage_trains_and_the_run_is_a_model_folder(data_dir, tiny_config, tmp_path):
    events = []
    out = train(_settings(data_dir, tmp_path / "run", tiny_config, sample_every=2), lambda e, **i: events.append((e, i)))
    stages = [i["stage"] for e, i in events if e == "stage"]
    assert stages == ["clip", "prior", "decoder-unet1"]
    losses = [i["loss"] for e, i in events if e == "step" and "loss" in i]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert (out / "samples" / "unet1-step0000002.png").is_file()
    model = checkpoint.load_model(out)
    embed = model.prior.sample(["a small red square on the left on a blue background"], num_samples_per_batch=2, steps=2)
    images = model.decoder.sample(image_embed=embed, text=["a small red square on the left on a blue background"], steps=2)
    assert images.shape == (1, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert sorted(p.name for p in (out / "training").glob("*.pt")) == ["clip.pt", "decoder-unet1.pt", "prior.pt"]


class Crash(Exception):
    pass


def test_a_crashed_run_resumes_to_the_same_weights(data_dir, tiny_config, tmp_path):
    straight = train(_settings(data_dir, tmp_path / "straight", tiny_config, steps=3, save_every=2))

    def crash_in_prior(event, **info):
        if event == "step" and info.get("stage") == "prior" and info["step"] == 3:
            raise Crash  # after the step-2 checkpoint, before step 3 is saved: like kill -9
    with pytest.raises(Crash):
        train(_settings(data_dir, tmp_path / "crashed", tiny_config, steps=3, save_every=2), crash_in_prior)
    resumed = train(_settings(data_dir, tmp_path / "crashed", tiny_config, steps=3, save_every=2, resume=True))

    for component in ("clip", "prior", "decoder"):
        a = load_file(straight / component / "model.safetensors")
        b = load_file(resumed / component / "model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{component}: {key}"


def test_unreadable_images_are_skipped_and_counted(data_dir, tiny_config, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for path in sorted(data_dir.glob("*.png"))[:8]:
        Image.open(path).save(data / path.name)
        (data / path.with_suffix(".txt").name).write_text(path.with_suffix(".txt").read_text())
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (data / "broken.txt").write_text("a large red circle in the center on a white background")
    (data / "nocaption.png").write_bytes((data_dir / "000000000.png").read_bytes())
    (data / "nocaption.txt").write_text("   ")
    events = []
    train(_settings(data, tmp_path / "run", tiny_config, stage="clip", steps=3), lambda e, **i: events.append((e, i)))
    done = [i for e, i in events if e == "done"][0]
    assert done["skipped"] == {"unreadable image": 1, "empty caption": 1}


def test_a_non_finite_loss_stops_without_touching_the_last_checkpoint(data_dir, tiny_config, tmp_path, monkeypatch):
    out = train(_settings(data_dir, tmp_path / "run", tiny_config, stage="clip", steps=2))
    before = (out / "clip" / "model.safetensors").read_bytes()
    from dalle2_core.clip import CLIP

    monkeypatch.setattr(CLIP, "forward", lambda self, text, images, return_loss=False: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingError, match="loss became nan at step 2"):
        train(_settings(data_dir, out, tiny_config, stage="clip", steps=4, resume=True))
    assert (out / "clip" / "model.safetensors").read_bytes() == before


def test_the_run_folder_is_never_overwritten_and_bad_folders_are_refused(data_dir, tiny_config, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--data", str(data_dir), "--out", str(out), "--config", str(tiny_config), "--image-size", "32"], catch_exceptions=False)
    assert result.exit_code == 1 and "is not empty; pass --resume" in result.output
    assert (out / "keep.txt").read_text() == "mine"

    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(cli, ["train", "--data", str(empty), "--out", str(tmp_path / "new")], catch_exceptions=False)
    assert result.exit_code == 1 and "no images found in" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()


def test_dream_train_cli_writes_a_model_and_says_where(data_dir, tiny_config, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--data", str(data_dir), "--out", str(out), "--config", str(tiny_config),
                                      "--image-size", "32", "--stage", "clip", "--steps", "2", "--batch-size", "4", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"model: {out}" in result.output
    assert checkpoint.read_index(out)[0] == ["clip"]


@pytest.mark.parametrize("decay, last_lr", [("constant", 2e-3), ("cosine", 0.0)])
def test_lr_decay_cosine_reaches_zero_at_the_last_step(data_dir, tiny_config, tmp_path, decay, last_lr):
    out = train(_settings(data_dir, tmp_path / "run", tiny_config, stage="clip", steps=3, lr=2e-3, lr_decay=decay))
    state = torch.load(out / "training" / "clip.pt", weights_only=True)
    assert state["step"] == 3
    assert state["trainer"]["schedulers"][0]["_last_lr"] == pytest.approx([last_lr, last_lr])


def test_compiled_training_gives_the_eager_weights(data_dir, tiny_config, tmp_path, monkeypatch):
    compiled = []
    original = torch.nn.Module.compile

    def record(self, **kw):
        compiled.append((type(self).__name__, kw["backend"]))
        return original(self, **kw)

    monkeypatch.setattr(torch.nn.Module, "compile", record)
    eager = train(_settings(data_dir, tmp_path / "eager", tiny_config))
    assert compiled == []
    # the "eager" backend runs dynamo's graph capture without code generation: what is tested here is
    # the wiring (which networks, weights and checkpoints unchanged), not inductor's kernels
    traced = train(_settings(data_dir, tmp_path / "compiled", tiny_config, compile="eager"))
    assert compiled == [("CLIP", "eager"), ("DiffusionPriorNetwork", "eager"), ("Unet", "eager")]
    for component in ("clip", "prior", "decoder"):
        a = load_file(eager / component / "model.safetensors")
        b = load_file(traced / component / "model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=f"{component}: {key}")


def test_dream_train_passes_lr_decay_and_compile(data_dir, tmp_path, monkeypatch):
    import dalle2_core.train.loop as loop

    seen = []
    monkeypatch.setattr(loop, "train", lambda settings, report: seen.append(settings))
    args = ["train", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--quiet"]
    for extra, expected in [([], ("constant", None)), (["--lr-decay", "cosine", "--compile"], ("cosine", "inductor"))]:
        result = CliRunner().invoke(cli, args + extra, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert (seen[-1].lr_decay, seen[-1].compile) == expected
