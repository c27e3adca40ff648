import subprocess
import sys

import pytest
from click.testing import CliRunner

from dream_cli.cli import cli


def test_help_lists_the_program():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "text to image" in result.output


HEAVY = ("torch", "PIL", "open_clip", "numpy", "rich", "safetensors", "huggingface_hub")


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["train", "--help"], ["--cond-scale", "nan", "x"],
                                  ["data", "shapes", "--num", "0", "--out", "x"], ["eval", "shapes", "--help"]])
def test_help_version_and_usage_errors_import_nothing_heavy(args):
    """What `dream --help` and a mistyped option need is click and the command modules; torch and the rest load
    only when a command runs (a fresh interpreter, so nothing imported by other tests counts)."""
    code = (f"import sys\nfrom dream_cli import main\ntry:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr


def test_the_help_lists_no_bare_argument_line():
    result = CliRunner().invoke(cli, ["--help"])
    assert "[PROMPT]" not in result.output and "--negative-prompt" in result.output
