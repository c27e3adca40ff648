"""What a conversion says when its input is wrong: the file or component it is about, before anything large is
allocated, and never torch's advice to load a pickle unsafely."""

import json
import shutil

import pytest
from helpers.cli_helpers import dream
from helpers.hf_cache import karlo_pipeline_folder

from dalle2_core.clip.open_clip_adapter import OpenClipAdapter


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return karlo_pipeline_folder(tmp_path_factory.mktemp("karlo") / "src")


def _edited(source, tmp_path, component, **changes):
    folder = shutil.copytree(source, tmp_path / "src")
    path = folder / component / ("scheduler_config.json" if component.endswith("scheduler") else "config.json")
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    return folder


def _error(result) -> str:
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_a_config_value_of_the_wrong_type_names_its_component(source, tmp_path):
    folder = _edited(source, tmp_path, "decoder", in_channels="three")
    result = dream("convert", "diffusers", folder, "--out", tmp_path / "out")
    assert result.exit_code == 1 and _error(result).startswith("Error: decoder (UNet2DConditionModel): ")
    assert "in_channels" in _error(result)


def test_a_petabyte_config_is_refused_before_anything_is_allocated(source, tmp_path):
    folder = _edited(source, tmp_path, "super_res_last", block_out_channels=[2**26, 2**26], norm_num_groups=1)
    result = dream("convert", "diffusers", folder, "--out", tmp_path / "out")
    assert result.exit_code == 1
    line = _error(result)
    assert "super_res_last" in line and "allocate" not in line and "DefaultCPUAllocator" not in result.output


def test_unknown_classes_in_model_index_are_refused(source, tmp_path):
    folder = shutil.copytree(source, tmp_path / "src")
    index = json.loads((folder / "model_index.json").read_text())
    index["prior"] = ["diffusers", "SomeOtherTransformer"]
    (folder / "model_index.json").write_text(json.dumps(index))
    result = dream("convert", "diffusers", folder, "--out", tmp_path / "out")
    assert result.exit_code == 1
    line = _error(result)
    assert "prior" in line and "SomeOtherTransformer" in line and "PriorTransformer" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"not weights at all", b"", b"PK\x03\x04 truncated zip"])
def test_an_open_clip_pretrained_file_that_is_not_weights(tmp_path, content):
    path = tmp_path / "weights.bin"
    path.write_bytes(content)
    with pytest.raises(ValueError) as caught:
        OpenClipAdapter("ViT-B-32", str(path))
    message = str(caught.value)
    assert str(path) in message and "is not a file of open_clip weights" in message
    assert "weights_only" not in message and "IndexError" not in type(caught.value).__name__
