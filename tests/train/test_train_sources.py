"""`dream train` past one folder: shards (resumed mid-stream), embedding folders, fine-tuning from a
model, gradient accumulation, and what every run measures."""

import json
import runpy
import sys

import pytest
import torch
from helpers.train_data import shapes, write_embeddings, write_work
from safetensors.torch import load_file

from dalle2_core import checkpoint
from dalle2_core.component import WEIGHTS_FILE
from dalle2_core.train.loop import TrainingError, TrainSettings, train


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return write_work(tmp_path_factory.mktemp("sources"))


def settings(work, out, **kw):
    base = dict(out=out, config=work / "tiny.json", image_size=32, steps=2, batch_size=4, save_every=2, seed=2)
    return TrainSettings(**{**base, **kw})


def weights(run, component):
    return load_file(run / component / WEIGHTS_FILE)


class Crash(Exception):
    pass


def test_a_run_on_shards_resumes_mid_stream_to_the_same_weights(work, tmp_path):
    shards = str(work / "shards" / "{00000..00001}.tar")
    kw = dict(data=shards, stage="decoder", steps=4, shuffle_buffer=4)
    events = []
    straight = train(settings(work, tmp_path / "straight", **kw), lambda e, **i: events.append((e, i)))

    def crash(event, **info):
        if event == "step" and info["step"] == 3:
            raise Crash  # after the step-2 checkpoint
    with pytest.raises(Crash):
        train(settings(work, tmp_path / "run", **kw), crash)
    resumed = train(settings(work, tmp_path / "run", resume=True, **kw))
    a, b = weights(straight, "decoder"), weights(resumed, "decoder")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [i for e, i in events if e == "done"][0]["skipped"] == {"unreadable image": 1}


def test_the_prior_trains_from_embeddings_alone_and_the_decoder_looks_them_up(work, tmp_path, monkeypatch):
    from dalle2_core.clip import XClipAdapter

    def no_images(self, images):
        raise AssertionError("the CLIP embedded an image")

    monkeypatch.setattr(XClipAdapter, "embed_image", no_images)
    out = train(settings(work, tmp_path / "run", embeddings=work / "embeddings", stage="prior"))
    assert checkpoint.read_index(out)[0] == ["clip", "prior"]
    out = train(settings(work, out, data=work / "folder", embeddings=work / "embeddings", stage="decoder", resume=True))
    assert checkpoint.read_index(out)[0] == ["clip", "prior", "decoder"]
    stored = json.loads((out / "training" / "settings.json").read_text())
    assert stored["stages"]["prior"]["embeddings"] == str(work / "embeddings") and stored["stages"]["prior"]["data"] is None


def test_embeddings_of_another_width_are_refused(work, tmp_path):
    samples = list(shapes(4))
    other = write_embeddings(tmp_path / "emb768", [k for k, _, _ in samples], [c for _, _, c in samples], dim=768, parts=1)
    with pytest.raises(TrainingError, match=r"embeddings in .*emb768 are 768 wide but the run's CLIP gives 32") as caught:
        train(settings(work, tmp_path / "run", embeddings=other, stage="prior"))
    assert caught.value.setting == "embeddings" and not (tmp_path / "run").exists()


def test_fine_tuning_starts_from_the_model_and_records_it(work, tmp_path):
    base = train(settings(work, tmp_path / "base", data=work / "folder", stage="decoder", steps=1))
    tuned = train(TrainSettings(data=work / "folder", out=tmp_path / "tuned", init=str(base), stage="decoder", steps=1,
                                batch_size=4, lr=1e-5))
    before, after = weights(base, "decoder"), weights(tuned, "decoder")
    drift = max((after[k] - before[k]).abs().max().item() for k in before)
    assert 0 < drift < 1e-4  # one small step away from the model it started from
    assert weights(tuned, "clip").keys() == weights(base, "clip").keys()
    stored = json.loads((tuned / "training" / "settings.json").read_text())
    assert stored["init"]["spec"] == str(base) and stored["init"]["source"] == "local" and stored["image_size"] == 32
    with pytest.raises(TrainingError, match="image size 64 differs from the 32 px of the model to start from"):
        train(TrainSettings(data=work / "folder", out=tmp_path / "other", init=str(base), image_size=64))


def test_every_run_writes_metrics_and_gradient_accumulation_reads_micro_batches(work, tmp_path):
    out = train(settings(work, tmp_path / "run", data=work / "folder", stage="prior", steps=3, save_every=3, grad_accum=2))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and {r["stage"] for r in rows} == {"prior"}
    assert set(rows[0]) == {"step", "stage", "loss", "lr", "grad_norm", "images_per_s", "seconds"}
    assert all(r["lr"] == 3e-4 and r["grad_norm"] > 0 and r["images_per_s"] > 0 for r in rows)
    assert rows[0]["seconds"] < rows[1]["seconds"] < rows[2]["seconds"]
    state = torch.load(out / "training" / "prior.pt", weights_only=True)
    assert (state["step"], state["batches"]) == (3, 6)  # two micro-batches of 2 per step of 4


def test_tensorboard_event_files_when_installed(work, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is an optional extra (pip install 'dream-dalle2[tensorboard]')")
    out = train(settings(work, tmp_path / "run", data=work / "folder", stage="prior", steps=1, save_every=1))
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_python_dash_m_dream_cli_is_the_dream_command(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dream_cli", "train", "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("dream_cli", run_name="__main__")
    assert exited.value.code == 0 and "--grad-accum" in capsys.readouterr().out
