"""A conversion stopped at any moment (kill -9, Ctrl-C) leaves nothing a re-run has to ask the user about: the model
folder is written beside its target and renamed into place at the end; temporaries of dead processes are removed by
the next run, a live process's are not."""

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers.cli_helpers import dream
from helpers.hf_cache import karlo_pipeline_folder

from dalle2_core.atomic import building_folder, remove_temporaries

# the dream command with every component write slowed down, so a signal lands while the model folder is half written
SLOW_DREAM = """
import sys, time
import dalle2_core.checkpoint as checkpoint
write = checkpoint.save_component
def slow(module, directory):
    out = write(module, directory)
    print("wrote", directory.name, flush=True)
    time.sleep(60)
    return out
checkpoint.save_component = slow
from dream_cli import main
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return karlo_pipeline_folder(tmp_path_factory.mktemp("karlo") / "src")


def _start_slow(args, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_DREAM, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    line = proc.stdout.readline()  # the first component is on disk, the rest are not
    assert line.startswith("wrote"), (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def _dream(args, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", "from dream_cli import main; main()", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.parametrize("how", ["kill -9", "Ctrl-C"])
def test_an_interrupted_conversion_leaves_no_half_folder_and_the_rerun_finishes(source, tmp_path, how):
    out = tmp_path / "models" / "karlo"
    proc = _start_slow(["convert", "diffusers", source, "--out", out])
    proc.send_signal(signal.SIGKILL if how == "kill -9" else signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    if how == "Ctrl-C":
        assert proc.returncode == 130 and stderr.strip().splitlines()[-1] == "Interrupted."
        assert sorted(p.name for p in out.parent.iterdir()) == []  # Ctrl-C cleans up at once
    assert not out.exists()  # never half-written
    result = _dream(["convert", "diffusers", source, "--out", out, "-q"])
    assert result.returncode == 0, result.stderr
    assert (out / "model_index.json").is_file() and sorted(p.name for p in out.parent.iterdir()) == ["karlo"]


def test_an_existing_folder_with_files_is_still_refused(source, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = dream("convert", "diffusers", source, "--out", out)
    assert result.exit_code == 1 and "is not empty" in result.output and (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_a_conversion_into_the_cache_killed_leaves_nothing_for_good(source, tmp_path):
    cache = tmp_path / "cache"
    args = ["--model", source, "--steps", "2,2", "--prior-steps", "2", "--seed", 1, "-q", "--outdir", tmp_path / "out", "x"]
    proc = _start_slow(args, env={"DREAM_CACHE": str(cache)})
    proc.kill()
    proc.wait(timeout=60)
    models = cache / "models" / "unclip"
    stale = [p for p in models.iterdir() if p.name.startswith(".")]
    assert len(stale) == 1 and any(stale[0].rglob("*.safetensors"))  # what kill -9 leaves: the weights written so far
    result = _dream(args, env={"DREAM_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    assert [p for p in models.iterdir() if p.name.startswith(".")] == []  # the next run removed it
    assert len(list(models.iterdir())) == 1


def test_a_live_temporary_of_another_process_is_kept(tmp_path):
    target = tmp_path / "model"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from dalle2_core.atomic import building_folder
with building_folder({str(target)!r}) as tmp:
    (tmp / "part").write_text("x")
    print(tmp, flush=True)
    time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        live = holder.stdout.readline().strip()
        assert live and os.path.isdir(live)
        assert remove_temporaries(tmp_path, {"model"}) == [] and os.path.isdir(live)
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert [p.name for p in remove_temporaries(tmp_path, {"model"})] == [os.path.basename(live)]
    with building_folder(target) as tmp:
        (tmp / "done").write_text("y")
    assert (target / "done").read_text() == "y" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
