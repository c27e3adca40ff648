"""How `dream` fails: interrupts, a full disk, huge images, no network, and the smaller refusals — one line each,
the right exit code, nothing left behind."""

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import zlib

import pytest
from helpers.cli_helpers import dream
from PIL import Image

from dalle2_core.families.unclip.pipeline import UnclipPipeline
from dream_cli.output import SETTINGS_CHUNK
from dream_cli.pictures import MAX_IMAGE_PIXELS, MAX_SIDE, load_image

DREAM = [sys.executable, "-c", "from dream_cli import main; main()"]


def error_line(result_or_stderr) -> str:
    stderr = result_or_stderr if isinstance(result_or_stderr, str) else result_or_stderr.stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("after", [0.2, 0.8])
def test_ctrl_c_while_loading_is_one_line_and_exit_130(tmp_path, after):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # "started" once Python runs our code: on a busy machine interpreter start-up alone can outlast `after`, and a
    # signal then meets Python's own handler before dream has one
    started = "import sys; sys.stderr.write('started\\n'); sys.stderr.flush(); from dream_cli import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", started, "--model", "shapes", "--outdir", str(tmp_path), "-q", "a red circle"],
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr.readline() == "started\n"
    try:
        proc.wait(timeout=after)  # importing the command modules, torch or the model when the signal arrives
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and error_line(stderr) == "Interrupted."
    assert leftovers(tmp_path) == []


def test_ctrl_c_while_sampling_is_one_line_and_leaves_no_file(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([*DREAM, "--model", "shapes", "--outdir", str(tmp_path), "-n", "16", "--seed", "1", "a red circle"],
                            stderr=subprocess.PIPE, text=True, env=env)
    first = proc.stderr.readline()  # the info line comes after the model is loaded, just before sampling
    assert first.startswith("seed 1"), first
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert error_line(stderr.replace("\r", "\n").splitlines()[-1]) == "Interrupted."
    assert "Traceback" not in stderr and leftovers(tmp_path) == []


def test_full_disk_names_the_file_and_leaves_nothing(model_dir, tmp_path, monkeypatch):
    def no_space(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", no_space)
    result = dream("--model", model_dir, "--seed", 3, "--outdir", tmp_path, "-q", "x")
    assert result.exit_code == 1
    assert error_line(result) == f"Error: cannot write {str(tmp_path / 'x-3-0.png')!r}: No space left on device"
    assert leftovers(tmp_path) == []


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height (PIL reads the size without decoding anything)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_huge_images_are_refused_before_decoding_or_read_reduced(model_dir, tmp_path):
    bomb = _png_header_only(tmp_path / "huge.png", 20000, 20000)
    result = dream("--model", model_dir, "--image", bomb, "--outdir", tmp_path / "out", "x")
    assert result.exit_code == 2
    line = error_line(result)
    assert "--image" in line and "20000x20000 (400 MP)" in line and f"up to {MAX_IMAGE_PIXELS // 10**6} MP" in line
    assert leftovers(tmp_path / "out") == []
    # an image bigger than any stage needs is read at most MAX_SIDE wide (JPEGs reduced while decoding)
    big = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (200, 30, 30)).save(big, quality=90)
    picture = load_image(big)
    assert picture.shape == (1, 3, 1536, 2048) and max(picture.shape[-2:]) <= MAX_SIDE
    assert abs(picture[0, 0].mean().item() - 200 / 255) < 0.02  # the colour survives the reduction


def test_no_network_gives_up_quickly_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT="https://hub.invalid", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([*DREAM, "--model", "someone/not-cached", "--outdir", str(tmp_path / "out"), "x"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert "'someone/not-cached' is not in the local Hugging Face cache" in error_line(proc.stderr)
    assert "Retry" not in proc.stderr and leftovers(tmp_path / "out") == []


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["--model", "http://example.com/x", "x"], 1, "model 'http://example.com/x' is a URL"),
        (["-x"], 2, "(a prompt that starts with '-' goes after '--': dream -- '-x')"),
        (["data", "shapes", "--out", "OUT", "--num", "1000000000000"], 2, "1000000000000 is not in the range 1<=x<=10000000"),
        (["eval", "shapes", "--save-images", "FILE", "--num", "1"], 1, "cannot write to --save-images"),
    ],
)
def test_small_refusals(model_dir, tmp_path, args, code, fragment):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = [str(blocker / "sub") if a == "FILE" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    if args[0] == "eval":
        args += ["--model", str(model_dir)]
    result = dream(*args)
    assert result.exit_code == code and fragment in error_line(result)


def test_an_unreadable_interpolation_end_names_its_argument(model_dir, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    result = dream("interpolate", "a red cube", bad, "--model", model_dir, "--outdir", tmp_path / "out")
    assert result.exit_code == 2 and "Invalid value for B" in error_line(result)


def test_out_of_memory_says_to_lower_the_batch_size(model_dir, tmp_path, monkeypatch):
    def oom(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you tried to allocate 99 GB")

    monkeypatch.setattr(UnclipPipeline, "decode", oom)
    result = dream("--model", model_dir, "-n", 4, "--batch-size", 4, "--outdir", tmp_path, "-q", "x")
    assert result.exit_code == 1 and error_line(result).endswith("lower --batch-size")


def test_tilde_outdir_grid_of_one_and_debug_tracebacks(model_dir, tmp_path):
    home = tmp_path / "home"
    result = dream("--model", model_dir, "--seed", 0, "--outdir", "~/pics", "--grid", "x", env={"HOME": str(home)})
    assert result.exit_code == 0, result.output
    assert leftovers(home / "pics") == ["x-0-0.png"] and not (tmp_path / "~").exists()
    assert "Note: --grid needs two or more images" in result.stderr
    result = dream("--model", tmp_path / "missing", "--debug", "x")
    assert result.exit_code == 1 and "Traceback" in result.stderr and "ModelNotFoundError" in result.stderr


def test_regenerate_command_takes_appended_options(model_dir, tmp_path):
    assert dream("--model", model_dir, "--seed", 2, "--outdir", tmp_path / "a", "-q", "a red cube").exit_code == 0
    with Image.open(tmp_path / "a" / "a-red-cube-2-0.png") as img:
        command = json.loads(img.text[SETTINGS_CHUNK])["command"]
    assert command.endswith("'a red cube'")
    assert dream("--model", model_dir, "--seed", 2, "--outdir", tmp_path / "b", "-q", "--", "-dash prompt").exit_code == 0
    with Image.open(tmp_path / "b" / "dash-prompt-2-0.png") as img:
        assert json.loads(img.text[SETTINGS_CHUNK])["command"].endswith("-- '-dash prompt'")
