"""Inputs as people really have them and as an attacker writes them: files that are not files, paths that are not
images, crafted metadata, options in every place — one line each, the right exit code, checked before any model loads,
and nothing silently wrong in what is written."""

import json
import os
import subprocess
import sys

import pytest
from helpers.cli_helpers import dream
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from dream_cli import generate as generate_module
from dream_cli.output import SETTINGS_CHUNK, read_png_text

DREAM = [sys.executable, "-c", "from dream_cli import main; main()"]
FAST = ("--steps", "2,2", "--prior-steps", "2", "-q")


def last_line(result) -> str:
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines and "Traceback" not in result.output, result.output
    return lines[-1]


def settings(path):
    return json.loads(read_png_text(path)[SETTINGS_CHUNK])


@pytest.fixture
def no_load(monkeypatch):
    """Fails the test if the command gets as far as loading a model: refusals must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(generate_module, "load", refuse)


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "picture.png"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(path)
    return path


def png_with(tmp_path, name, chunks: dict) -> str:
    meta = PngInfo()
    for key, value in chunks.items():
        meta.add_text(key, value)
    path = tmp_path / name
    Image.new("RGB", (8, 8)).save(path, pnginfo=meta)
    return path


# --- 1: a FIFO (or any non-regular file) blocks no command ------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["--init-image", "FIFO", "x"], ["--init-image", "PIC", "--mask", "FIFO", "x"], ["--prompts", "FIFO"], ["--from", "FIFO"],
    ["--image", "FIFO"], ["upscale", "FIFO"], ["info", "FIFO"], ["mix", "FIFO:0.5"], ["interpolate", "FIFO", "x"],
])
def test_a_fifo_is_a_usage_error_not_a_hang(tmp_path, picture, args):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    args = [str(fifo) if a == "FIFO" else f"{fifo}:0.5" if a == "FIFO:0.5" else str(picture) if a == "PIC" else a for a in args]
    proc = subprocess.run([*DREAM, "--model", "shapes", *args] if args[0] not in ("upscale", "info", "mix", "interpolate")
                          else [*DREAM, *args], capture_output=True, text=True, timeout=60, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().endswith(f"{str(fifo)!r} is a FIFO (named pipe); dream reads regular files only"), proc.stderr


def test_prompts_from_standard_input(model_dir, tmp_path):
    result = dream("--model", model_dir, *FAST, "--seed", 1, "--prompts", "-", "--outdir", tmp_path, input="a red cube\n")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["a-red-cube-1-0.png"]


# --- 3: --outpaint is bounded ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["left:15000", "left:100000", "left:99999999999999999999", "left:100,right:100"])
def test_outpaint_is_bounded_before_any_allocation(picture, no_load, spec):
    result = dream("--model", "shapes", "--init-image", picture, "--outpaint", spec, "x")
    assert result.exit_code == 2
    line = last_line(result)
    assert "--outpaint" in line and "at most 96 px" in line and "the picture keeps at least a quarter" in line


# --- 4: mix / interpolate items that look like paths -------------------------------------------------------------


@pytest.mark.parametrize("command", [["mix", "nope.png:0.5"], ["mix", "a red cube", "photos/cat:0.5"],
                                     ["interpolate", "a red cube", "nope.jpg"], ["interpolate", "./missing", "a red cube"]])
def test_a_missing_image_path_is_not_a_prompt(model_dir, tmp_path, command):
    result = dream(*command, "--model", model_dir, "--outdir", tmp_path)
    assert result.exit_code == 2
    assert "does not exist" in last_line(result) and not list(tmp_path.glob("*.png"))


def test_prompts_with_a_slash_or_a_colon_stay_prompts(model_dir, tmp_path):
    result = dream("mix", "a red cube on/off a table:0.5", "dog: a good boy", "--model", model_dir, *FAST, "--seed", 1,
                   "--outdir", tmp_path)
    assert result.exit_code == 0, result.output


# --- 8: untrusted text is printed with its control characters escaped -------------------------------------------


def test_info_escapes_terminal_control_sequences(tmp_path):
    crafted = {"prompt": "\x1b[2J\x1b]0;owned\x07hello", "seed": 1, "steps": [2], "model": "m\x1b[31m"}
    path = png_with(tmp_path, "crafted.png", {SETTINGS_CHUNK: json.dumps(crafted)})
    result = dream("info", path)
    assert result.exit_code == 0
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "\\x1b[2J\\x1b]0;owned\\x07hello" in result.output and "m\\x1b[31m" in result.output


# --- 9: a UTF-8 BOM and broken JSON lines in --prompts ------------------------------------------------------------


def test_a_byte_order_mark_keeps_the_first_json_line_json(model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes('\ufeff{"prompt": "a red cube", "seed": 40}\n'.encode())
    result = dream("--model", model_dir, *FAST, "--prompts", prompts, "--outdir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a-red-cube-40-0.png"]


@pytest.mark.parametrize("line, fragment", [
    ('{"prompt": "x", "seed": 1', "prompts.txt line 2 starts with '{' but is not valid JSON"),
    ('["a red cube"]', "prompts.txt line 2 is a JSON array; a JSON line is an object"),
    ('[oops', "prompts.txt line 2 starts with '[' but is not valid JSON"),
])
def test_a_line_that_starts_like_json_must_be_json(tmp_path, no_load, line, fragment):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"a plain prompt\n{line}\n")
    result = dream("--model", "shapes", "--prompts", prompts)
    assert result.exit_code == 2 and fragment in last_line(result)


# --- 10 and the small ones: every value is checked before the model loads, as the command line checks it -----------


@pytest.mark.parametrize("row, fragment", [
    ({"prompt": "x", "steps": "abc"}, "steps"),
    ({"prompt": "x", "negative_prompt": 5}, "negative_prompt 5 must be a string"),
    ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": "x", "cond_scale": [1, "nan"]}, "cond_scale"),
    ({"prompt": "x", "sampler": "euler"}, "sampler"),
    ({"prompt": "x", "num": True}, "num"),
])
def test_prompt_file_values_are_checked_before_loading(tmp_path, no_load, row, fragment):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("a red cube\n" + json.dumps(row) + "\n")
    result = dream("--model", "shapes", "--prompts", prompts)
    assert result.exit_code == 2
    line = last_line(result)
    assert "p.jsonl line 2" in line and fragment in line


@pytest.mark.parametrize("stored, fragment", [
    ({"seed": -5}, "seed -5"),
    ({"steps": "abc"}, "steps 'abc'"),
    ({"steps": [2, "x"]}, "steps"),
    ({"cond_scale": {"a": 1}}, "cond_scale"),
    ({"sampler": 3}, "sampler 3"),
    ({"negative_prompt": ["x"]}, "negative_prompt"),
    ({"strength": "strong", "init_image": "a.png"}, "strength"),
    ({"precision": "fp64"}, "precision 'fp64'"),
])
def test_from_checks_stored_settings_as_the_command_line_does(tmp_path, no_load, stored, fragment):
    path = png_with(tmp_path, "made.png", {SETTINGS_CHUNK: json.dumps({"prompt": "a red cube", "model": "shapes", **stored})})
    result = dream("--from", path)
    assert result.exit_code == 2
    line = last_line(result)
    assert "made.png" in line and fragment in line and "--from" in line


@pytest.mark.parametrize("value", ["nan", "inf", "-0.5", "1.5"])
def test_strength_must_be_a_number_in_0_1(picture, no_load, value):
    result = dream("--model", "shapes", "--init-image", picture, "--strength", value, "x")
    assert result.exit_code == 2 and "--strength" in last_line(result) and f"{value!r}" in last_line(result)


def test_a_malformed_settings_chunk_is_called_malformed(tmp_path):
    result = dream("info", png_with(tmp_path, "bad.png", {SETTINGS_CHUNK: "{not json"}))
    assert result.exit_code == 2 and "'dream-dalle2' text chunk is malformed" in last_line(result)
    result = dream("info", png_with(tmp_path, "list.png", {SETTINGS_CHUNK: "[1, 2]"}))
    assert result.exit_code == 2 and "malformed" in last_line(result)


# --- 11: info / --from on JPEG, WebP, GIF -------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".webp", ".gif"])
def test_info_on_other_formats_says_there_are_no_settings(tmp_path, suffix):
    path = tmp_path / f"photo{suffix}"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    for args in (["info", path], ["--from", path]):
        result = dream(*args)
        assert result.exit_code == 2, result.output
        assert "holds no dream settings" in last_line(result) and "AttributeError" not in result.output


def test_info_reads_settings_from_a_jpeg_comment(tmp_path):
    path = tmp_path / "copied.jpg"
    Image.new("RGB", (8, 8)).save(path, comment=json.dumps({"prompt": "a red cube", "seed": 3}).encode())
    result = dream("info", path)
    assert result.exit_code == 0 and "a red cube" in result.output


# --- 12: options that apply everywhere, before or after a subcommand --------------------------------------------------


def test_global_options_before_or_after_a_subcommand(tmp_path):
    plain = tmp_path / "plain.jpg"
    Image.new("RGB", (8, 8)).save(plain)
    for args in (["--debug", "info", plain], ["info", plain, "--debug"], ["-q", "info", plain], ["info", "--quiet", plain]):
        result = dream(*args)
        assert result.exit_code == 2 and "holds no dream settings" in result.output, (args, result.output)
    assert not list(tmp_path.rglob("*.png"))  # nothing was generated from the prompt "info plain.jpg"


def test_global_options_before_a_subcommand_reach_it(model_dir, tmp_path):
    result = dream("--precision", "bf16", "--device", "cpu", "-q", "mix", "a red cube", "--model", model_dir, *FAST,
                   "--seed", 1, "--outdir", tmp_path)
    assert result.exit_code == 0, result.output
    (path,) = tmp_path.glob("*.png")
    assert settings(path)["precision"] == "bf16" and result.stderr == ""


def test_a_prompt_equal_to_a_command_name_needs_the_separator(tmp_path, no_load):
    result = dream("--seed", 3, "info")
    assert result.exit_code == 2 and "dream -- info" in last_line(result)


# --- 14: no private local paths in what is written ---------------------------------------------------------------------


def test_metadata_names_a_local_model_by_its_folder_name_only(model_dir, picture, tmp_path, monkeypatch):
    result = dream("--model", model_dir, *FAST, "--seed", 2, "--outdir", tmp_path / "out", "--init-image", picture,
                   "--strength", "0.5", "a red cube")
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "out").glob("*.png")
    chunks = read_png_text(path)
    for text in chunks.values():
        assert str(model_dir.parent) not in text and str(tmp_path) not in text and os.path.expanduser("~") + "/" not in text
    stored = json.loads(chunks[SETTINGS_CHUNK])
    assert stored["model"] == model_dir.name and stored["model_source"] == "local" and len(stored["model_hash"]) == 64
    assert stored["init_image"] == "picture.png" and f"Model: {model_dir.name}," in chunks["parameters"]
    # pictures are found by name (beside the run); the local model is found when it is given, and named when it is not
    monkeypatch.chdir(tmp_path)
    result = dream("--from", path, "--outdir", tmp_path / "again", "-q")
    assert result.exit_code == 2 and f"the local model folder {model_dir.name!r}" in last_line(result)
    assert "give --model PATH" in last_line(result)
    result = dream("--from", path, "--model", model_dir, "--outdir", tmp_path / "again", "-q")
    assert result.exit_code == 0, result.output
    (again,) = (tmp_path / "again").glob("*.png")
    assert Image.open(again).tobytes() == Image.open(path).tobytes()


# --- small ones: silent no-ops are said and skipped; what is written says what ran ---------------------------------------


def test_nothing_to_regenerate_is_said_and_skipped(tmp_path, picture, no_load):
    black = tmp_path / "black.png"
    Image.new("L", (32, 32), 0).save(black)
    cases = [(["--mask", black], "is all black: nothing to regenerate"), (["--outpaint", "left:0"], "adds no pixels"),
             (["--strength", "0"], "--strength 0 keeps the picture as it is")]
    for extra, fragment in cases:
        result = dream("--model", "shapes", "--init-image", picture, *extra, "--outdir", tmp_path / "out", "x")
        assert result.exit_code == 0 and fragment in result.stderr, result.output
        assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_mask_of_another_size_is_stretched_with_a_note(tmp_path, picture):
    mask = tmp_path / "mask.png"
    Image.new("L", (16, 8), 255).save(mask)
    result = dream("--model", "shapes", *FAST[:4], "--init-image", picture, "--mask", mask, "--seed", 1, "--outdir", tmp_path / "o", "x")
    assert result.exit_code == 0, result.output
    assert "Note: the mask 'mask.png' is 16x8 and the image 32x32: the mask was stretched" in result.stderr


def test_upscale_that_shrinks_says_so_and_records_only_the_stages_that_ran(tmp_path):
    big = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (200, 40, 40)).save(big)  # read at most 2048 wide; the note gives the file's size
    result = dream("upscale", big, "--model", "shapes", "--steps", "2,2", "--seed", 0, "--outdir", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "Note: 'big.jpg' is 4000x3000, larger than the model's 64x64 output: upscale makes it smaller" in result.stderr
    stored = settings(tmp_path / "o" / "big-up-0.png")
    assert stored.get("prior_steps") is None and stored.get("prior_cond_scale") is None and stored["steps"] == [2]
    assert "Prior" not in read_png_text(tmp_path / "o" / "big-up-0.png")["parameters"]
    assert stored["source"] == "big.jpg"


def test_variations_record_no_prior_settings(model_dir, picture, tmp_path):
    result = dream("--model", model_dir, *FAST, "--seed", 0, "--image", picture, "--outdir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "out").glob("*.png")
    assert settings(path).get("prior_steps") is None and "Prior" not in read_png_text(path)["parameters"]
    assert "--prior-steps" not in settings(path)["command"]


def test_interpolate_frames_record_their_t_and_are_bounded(model_dir, tmp_path):
    result = dream("interpolate", "a red cube", "a blue ball", "--frames", 3, "--model", model_dir, *FAST, "--seed", 1,
                   "--outdir", tmp_path)
    assert result.exit_code == 0, result.output
    params = [read_png_text(tmp_path / f"a-red-cube-to-a-blue-ball-1-{i}.png")["parameters"] for i in range(3)]
    assert len(set(params)) == 3 and "Interpolation t: 0.5" in params[1]
    result = dream("interpolate", "a", "b", "--frames", 100000, "--model", model_dir)
    assert result.exit_code == 2 and "--frames" in last_line(result)


def test_interpolate_writes_each_frame_as_it_is_made(model_dir, tmp_path, monkeypatch):
    from dalle2_core.families.unclip.pipeline import UnclipPipeline

    written = []
    original = UnclipPipeline.decode

    def decode(self, *args, **kwargs):
        written.append(len(list(tmp_path.glob("*.png"))))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(UnclipPipeline, "decode", decode)
    result = dream("interpolate", "a red cube", "a blue ball", "--frames", 4, "--batch-size", 2, "--model", model_dir, *FAST,
                   "--seed", 1, "--outdir", tmp_path)
    assert result.exit_code == 0, result.output
    assert written == [0, 2]  # the first batch's frames were on disk before the second batch was decoded


def test_a_long_negative_prompt_is_called_a_negative_prompt(model_dir, tmp_path):
    result = dream("--model", model_dir, *FAST[:4], "--seed", 1, "--negative-prompt", "blue " * 200, "--outdir", tmp_path, "x")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning")]
    assert len(warnings) == 1 and "negative prompt" in warnings[0]


def test_each_stage_is_reported_once_per_run(model_dir, tmp_path):
    result = dream("--model", model_dir, "--steps", "2,2", "--prior-steps", "2", "--seed", 1, "--negative-prompt", "blue",
                   "--outdir", tmp_path, "x")
    assert result.exit_code == 0, result.output
    prior = [line for line in result.stderr.splitlines() if line.startswith("prior")]
    assert len(prior) == 1, result.stderr


def test_under_torchrun_the_failure_summary_is_dreams_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "-m", "dream_cli", "--model",
                           str(tmp_path / "missing"), "--seed", "1", "x"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    assert f"traceback : Error: model folder {str(tmp_path / 'missing')!r} does not exist" in proc.stderr, proc.stderr
    assert "To enable traceback" not in proc.stderr  # torchrun's pointer, in place of the worker's own error
