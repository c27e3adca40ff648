"""A run imports only what its model uses: the bundled shapes model (a project CLIP, no open_clip tower) loads and
samples without open_clip or torchvision, in a fresh interpreter so nothing other tests imported counts."""

import json
import os
import subprocess
import sys

import pytest

# what a model without an open_clip tower must not import: open_clip, torchvision (open_clip imports it, and it
# imports torch._dynamo), timm (open_clip's), and the Hub client (the bundled model is on disk)
NOT_ON_THE_SHAPES_PATH = ("open_clip", "torchvision", "timm", "huggingface_hub", "torch._dynamo")

PROMPT = "a large red circle on the left on a blue background"

LIBRARY = f"""
import torch
from dalle2_core.hub import bundled_path
from dalle2_core.pipeline import load_pipeline

pipeline = load_pipeline(bundled_path("shapes"))
settings = pipeline.resolve(steps=(2, 2), prior_steps=2)
images = pipeline.generate([{PROMPT!r}], settings, generator=torch.Generator().manual_seed(0))
assert images.shape == (1, 3, 64, 64), images.shape
"""

CLI = """
from dream_cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    assert not exit.code, exit.code
"""


def _imported_after(code: str, *args: str) -> list[str]:
    """Which of NOT_ON_THE_SHAPES_PATH a fresh interpreter has imported after running `code`."""
    check = f"import json, sys\n{code}\nprint(json.dumps(sorted(m for m in {NOT_ON_THE_SHAPES_PATH!r} if m in sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", check, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_shapes_pipeline_loads_and_samples_without_open_clip_or_torchvision():
    assert _imported_after(LIBRARY) == []


def test_dream_on_the_shapes_model_imports_no_open_clip_or_torchvision(tmp_path):
    args = ["--model", "shapes", "-n", "2", "--seed", "0", "--steps", "2,2", "--prior-steps", "2", "--outdir", str(tmp_path), PROMPT]
    assert _imported_after(CLI, *args) == []
    assert len(list(tmp_path.glob("*.png"))) == 2  # the run did its work: writing PNGs needs no torchvision either


def test_importing_the_clip_package_leaves_open_clip_unimported_until_an_open_clip_tower_is_built():
    code = ("import dalle2_core.clip as clip\nfrom dalle2_core.clip import ClipWeightsUnavailable, OpenClipAdapter, OpenClipConfig\n"
            "assert 'HFClipAdapter' in dir(clip) and issubclass(ClipWeightsUnavailable, RuntimeError)\n"
            "assert OpenClipConfig('ViT-B-32', None).name == 'ViT-B-32'")
    assert _imported_after(code) == []


@pytest.mark.parametrize("name", ["HFClipAdapter", "HFClipConfig", "OpenClipAdapter", "OpenAIClipAdapter"])
def test_the_open_clip_adapters_keep_their_public_import_paths(name):
    import dalle2_core.clip

    cls = getattr(dalle2_core.clip, name)
    assert cls.__name__ == name and cls.__module__.startswith("dalle2_core.clip.")
    with pytest.raises(AttributeError, match="no attribute 'NoSuchAdapter'"):
        dalle2_core.clip.NoSuchAdapter  # noqa: B018
