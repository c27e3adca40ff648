"""Runs training scenarios inside one `torchrun` process group (started by tests/train/test_train_ddp.py).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/helpers/ddp_runs.py WORK SCENARIO...

WORK holds the data the test wrote (folder/, shards/, embeddings/, tiny.json, any_width.json); each
scenario trains into WORK/runs/<scenario>/ and rank 0 writes WORK/runs/<scenario>.done when it finished.
Scenario `cli` is `dream train --stage decoder` on a new folder, through the command line's own code
(it closes the process group at its end: give it last).
"""

import os
import sys
from pathlib import Path

from dalle2_core.train import distributed
from dalle2_core.train.loop import OpenClip, TrainSettings, train


def scenarios(work: Path) -> dict:
    folder, shards = work / "folder", str(work / "shards" / "{00000..00001}.tar")
    tiny = dict(config=work / "tiny.json", image_size=32, steps=2, batch_size=4)
    return {
        "clip": dict(data=folder, stage="clip", **tiny),
        "prior": dict(data=folder, stage="prior", **tiny),
        "decoder_fsdp": dict(data=folder, stage="decoder", fsdp=True, **tiny),
        "open_clip": dict(data=folder, stage="decoder", clip=OpenClip("ViT-S-32-alt"), **{**tiny, "config": work / "any_width.json"}),
        "shards": dict(data=shards, stage="decoder", grad_accum=2, shuffle_buffer=4, **tiny),
        "embeddings": dict(embeddings=work / "embeddings", stage="prior", **tiny),
    }


def dream_train(work: Path, out: Path) -> None:
    from dream_cli.cli import cli

    args = ["train", "--data", work / "folder", "--out", out, "--stage", "decoder", "--steps", 2, "--batch-size", 4,
            "--config", work / "tiny.json", "--image-size", 32, "--device", "cpu"]
    cli.main([str(a) for a in args], standalone_mode=False)


def main(work: Path, names: list[str]) -> None:
    distributed.init("cpu")
    world = distributed.rank_world()[1]
    try:
        table = scenarios(work)
        for name in names:
            out = work / "runs" / name
            dream_train(work, out) if name == "cli" else train(TrainSettings(out=out, **table[name]))
            if int(os.environ["RANK"]) == 0:
                (work / "runs" / f"{name}.done").write_text(str(world))
    finally:
        distributed.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
