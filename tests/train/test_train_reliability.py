"""`dream train` fails cleanly: one line, exit 2 for usage and 1 for runtime errors, the run folder
left as it was; a resumed run keeps its architecture; a run killed while saving resumes cleanly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers.train_data import TINY, write_config, write_folder
from safetensors.torch import load_file

from dalle2_core.atomic import remove_temporaries
from dalle2_core.train.loop import TrainingError, TrainSettings, train
from dream_cli.cli import cli


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("data"), 16)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("cfg") / "tiny.json")


def dream(*args):
    return CliRunner().invoke(cli, ["train", *map(str, args)], catch_exceptions=False)


def base(data, out, config, *extra):
    return ["--data", data, "--out", out, "--config", config, "--batch-size", 4, "--steps", 1, "--quiet", *extra]


def one_error_line(result, code: int) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    return lines[0]


def test_a_resumed_run_keeps_its_architecture_and_records_only_what_was_used(data, config, tmp_path):
    out = tmp_path / "run"
    assert dream(*base(data, out, config, "--image-size", 32, "--stage", "clip")).exit_code == 0
    settings = out / "training" / "settings.json"
    before = settings.read_bytes()

    other = write_config(tmp_path / "other.json", {**TINY, "unets": [{**TINY["unets"][0], "dim": 16}]})
    line = one_error_line(dream(*base(data, out, other, "--resume", "--stage", "decoder")), 2)
    assert line == "Error: Invalid value for '--config': the config sets unets[0].dim to 16; this run was started with 8"
    line = one_error_line(dream(*base(data, out, config, "--resume", "--image-size", 64)), 2)
    assert line.startswith("Error: Invalid value for '--image-size': image_size 64 differs from this run's 32")
    assert settings.read_bytes() == before  # nothing recorded for runs that did not happen

    # without --config / --image-size a resumed run takes its own; each stage records what it used
    result = CliRunner().invoke(cli, ["train", "--data", str(data), "--out", str(out), "--resume", "--stage", "prior",
                                      "--steps", "2", "--batch-size", "8", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stored = json.loads(settings.read_text())
    assert stored["image_size"] == 32 and stored["presets"]["unets"][0]["dim"] == 8
    assert (stored["stages"]["clip"]["steps"], stored["stages"]["clip"]["batch_size"]) == (1, 4)
    assert (stored["stages"]["prior"]["steps"], stored["stages"]["prior"]["batch_size"]) == (2, 8)


def test_every_config_section_is_built_before_the_first_step(data, tmp_path):
    wrong = write_config(tmp_path / "wrong.json", {**TINY, "unets": [{**TINY["unets"][0], "dim": "8"}]})
    events = []
    with pytest.raises(TrainingError, match="config section 'unets' is invalid") as caught:
        train(TrainSettings(data=data, out=tmp_path / "run", config=wrong, image_size=32, steps=1, batch_size=4),
              lambda e, **i: events.append(e))
    assert caught.value.setting == "config" and caught.value.usage
    assert events == []  # the CLIP stage never started
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad, fix, flag", [
    (["--config", "UNKNOWN"], [], "--config"),
    (["--batch-size", "32"], [], "--batch-size"),
    (["--clip", "open_clip:NoSuchModel"], [], "--clip"),
    (["--clip", "vit-b-32"], [], "--clip"),
    (["--stage", "decoder", "--unet", "3"], ["--stage", "clip"], "--unet"),
])
def test_a_failed_run_leaves_the_folder_as_it_found_it_and_its_retry_works(data, config, tmp_path, bad, fix, flag):
    unknown = write_config(tmp_path / "unknown.json", {**TINY, "unets": [{**TINY["unets"][0], "dimm": 8}]})
    bad = [str(unknown) if a == "UNKNOWN" else a for a in bad]
    for out in (tmp_path / "absent", tmp_path / "empty"):
        existed = out.name == "empty"
        out.mkdir(exist_ok=True) if existed else None
        line = one_error_line(dream(*base(data, out, config, "--image-size", 32), *bad), 2)
        assert f"'{flag}'" in line
        assert out.exists() == existed and (not existed or not any(out.iterdir()))
    result = dream(*base(data, out, config, "--image-size", 32, "--stage", "clip"), *fix)
    assert result.exit_code == 0, result.output  # the corrected run is not refused


def test_a_run_that_fails_before_its_first_checkpoint_is_removed(data, config, tmp_path, monkeypatch):
    from dalle2_core.clip import CLIP

    monkeypatch.setattr(CLIP, "forward", lambda self, text, images, return_loss=False: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingError, match="loss became nan at step 0"):
        train(TrainSettings(data=data, out=tmp_path / "run", config=config, image_size=32, stage="clip", steps=2, batch_size=4))
    assert not (tmp_path / "run").exists()


def test_small_refusals_are_one_line(data, config, tmp_path):
    file = tmp_path / "file"
    file.write_text("mine")
    line = one_error_line(dream(*base(data, file, config)), 2)
    assert line == f"Error: Invalid value for '--out': {file} is a file; the run's output must be a folder"
    assert file.read_text() == "mine"
    line = one_error_line(dream(*base(data, tmp_path / "run", config, "--precision", "fp16", "--device", "cpu")), 2)
    assert line == "Error: Invalid value for '--precision': fp16 needs a CUDA device (gradient scaling); on cpu use bf16 or fp32"
    assert not (tmp_path / "run").exists()


def test_help_describes_every_option():
    result = CliRunner().invoke(cli, ["train", "--help"])
    command = next(c for c in cli.commands.values() if c.name == "train")
    undescribed = [p.opts[0] for p in command.params if isinstance(p, __import__("click").Option) and not p.help]
    assert result.exit_code == 0 and undescribed == []


def test_plain_progress_lines_when_stderr_is_not_a_terminal(data, config, tmp_path):
    out = tmp_path / "run"
    args = base(data, out, config, "--image-size", 32, "--stage", "clip", "--steps", 2, "--save-every", 1)
    result = CliRunner().invoke(cli, ["train", *map(str, [a for a in args if a != "--quiet"])], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "clip: steps 0 -> 2"
    assert lines[1].startswith("clip step 1/2  loss ") and "img/s" in lines[1]
    assert lines[2] == f"clip step 1: saved {out}"
    assert lines[3].startswith("clip step 2/2  loss ")


def test_remove_temporaries_takes_only_our_own(tmp_path):
    import tempfile

    ours = [tempfile.mkstemp(prefix=".clip.pt.", suffix=".tmp", dir=tmp_path)[1], tempfile.mkdtemp(prefix=".decoder.tmp-", dir=tmp_path)]
    theirs = [".clip.pt.notours.tmp", ".decoder.tmp-x", "clip.pt", ".hidden"]
    for name in theirs:
        (tmp_path / name).write_text("keep")
    removed = remove_temporaries(tmp_path, {"clip.pt", "decoder"})
    assert sorted(map(str, removed)) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs)


# a `dream train` whose n-th `torch.save` writes part of its file and hangs, so that the test can
# kill -9 it in the middle of a checkpoint
_HANGING = """
import sys, time
import torch
at, signal_file = int(sys.argv[1]), sys.argv[2]
real, calls = torch.save, []
def hanging(obj, path, *args, **kwargs):
    calls.append(path)
    if len(calls) == at:
        open(path, "wb").write(b"partial")
        open(signal_file, "w").close()
        time.sleep(600)
    return real(obj, path, *args, **kwargs)
torch.save = hanging
from dream_cli.cli import main
main(sys.argv[3:])
"""


def test_a_run_killed_while_saving_resumes_to_the_same_weights_and_cleans_up(data, config, tmp_path):
    args = base(data, tmp_path / "run", config, "--image-size", 32, "--stage", "clip", "--save-every", 2, "--device", "cpu")
    args = [str(a) for a in args]
    args[args.index("--steps") + 1] = "3"
    signal_file = tmp_path / "hanging"
    process = subprocess.Popen([sys.executable, "-c", _HANGING, "2", str(signal_file), "train", *args],
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not signal_file.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert signal_file.exists(), process.stderr.read().decode()
    os.kill(process.pid, signal.SIGKILL)  # writing the state of the last checkpoint (step 3)
    process.wait()
    run = tmp_path / "run"
    assert [p.name.startswith(".clip.pt.") for p in (run / "training").glob(".*")] == [True]

    assert dream(*args, "--resume").exit_code == 0
    assert not [p for p in run.rglob(".*")], sorted(run.rglob(".*"))
    straight = train(TrainSettings(data=data, out=tmp_path / "straight", config=config, image_size=32, stage="clip", steps=3,
                                   batch_size=4, save_every=2))
    a, b = load_file(straight / "clip" / "model.safetensors"), load_file(run / "clip" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
