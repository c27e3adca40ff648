"""`dream train` under torchrun with 2 CPU processes (gloo): every stage alone on a new run folder, a
frozen open_clip CLIP, shards, an embedding folder, and FSDP2 sharding (the same weights as DDP).
One torchrun runs them all (tests/helpers/ddp_runs.py): starting two processes is most of the time."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.train_data import write_work
from safetensors.torch import load_file

from dalle2_core import checkpoint
from dalle2_core.component import WEIGHTS_FILE

ROOT = Path(__file__).parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return write_work(tmp_path_factory.mktemp("ddp"))


def _weights(run: Path, component: str) -> dict[str, torch.Tensor]:
    return load_file(run / component / WEIGHTS_FILE)


def test_every_stage_and_data_source_under_torchrun(work):
    names = ["clip", "prior", "decoder_fsdp", "open_clip", "shards", "embeddings", "cli"]
    result = _run([*TORCHRUN, str(ROOT / "tests" / "helpers" / "ddp_runs.py"), str(work), *names], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = work / "runs"
    assert all((runs / f"{name}.done").read_text() == "2" for name in names)

    # `dream train --stage decoder` on a new folder (the ranks used to race on an embedding cache)
    assert result.stdout.count("model: ") + result.stderr.count("model: ") == 1  # only rank 0 reports
    assert checkpoint.read_index(runs / "cli")[0] == ["clip", "decoder"]
    assert len((runs / "cli" / "metrics.jsonl").read_text().splitlines()) == 2

    assert checkpoint.read_index(runs / "clip")[0] == ["clip"]
    model = checkpoint.load_model(runs / "open_clip")  # a frozen open_clip CLIP: the decoder follows its width
    assert type(model.clip).__name__ == "OpenClipAdapter" and model.decoder.unets[0].config.conditioning.image_embed_dim == 256
    embed = model.clip.embed_text(["a red square"]).text_embed
    assert model.decoder.sample(image_embed=embed, text=["a red square"], steps=2).shape == (1, 3, 32, 32)

    # FSDP2 shards train the same weights as DDP replicas, and save one ordinary model folder
    a, b = _weights(runs / "decoder_fsdp", "decoder"), _weights(runs / "cli", "decoder")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert sorted(p.name for p in (runs / "decoder_fsdp" / "training").iterdir()) == ["decoder-unet1.pt", "settings.json"]

    assert checkpoint.load_model(runs / "shards").decoder is not None
    # the prior trained from the embedding folder alone: no image folder or shards were named
    assert checkpoint.read_index(runs / "embeddings")[0] == ["clip", "prior"]
