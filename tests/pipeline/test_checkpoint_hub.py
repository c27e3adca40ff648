"""Model resolution: what `--model` accepts and how each kind of name is told apart."""

import pytest
from helpers.checkpoint_tiny import save_tiny_model

from dalle2_core.hub import ModelNotFoundError, default_model_spec, parse_hub_id, resolve_model


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("org/name", ("org/name", None)),
        ("laion/DALLE2-PyTorch@main", ("laion/DALLE2-PyTorch", "main")),
        ("org/name@" + "c" * 40, ("org/name", "c" * 40)),
        ("org/name@refs/pr/1", ("org/name", "refs/pr/1")),
        ("./org/name", None),
        ("/abs/path", None),
        ("a/b/c", None),
        ("shapes", None),
    ],
)
def test_parse_hub_id(spec, expected):
    assert parse_hub_id(spec) == expected


def test_default_is_dream_model_env_then_kandinsky(monkeypatch):
    monkeypatch.delenv("DREAM_MODEL", raising=False)
    assert default_model_spec() == "kandinsky"
    monkeypatch.setenv("DREAM_MODEL", "org/name@v1")
    assert default_model_spec() == "org/name@v1"


def test_local_folders_and_unknown_names(tmp_path, monkeypatch):
    folder = save_tiny_model(tmp_path / "org" / "tiny")
    monkeypatch.chdir(tmp_path)
    # an existing relative folder wins over the Hub id it looks like
    resolved = resolve_model("org/tiny")
    assert resolved.source == "local" and resolved.path.resolve() == folder.resolve()
    with pytest.raises(ModelNotFoundError, match=r"model folder 'missing/dir/x' does not exist"):
        resolve_model("missing/dir/x")
    with pytest.raises(ModelNotFoundError, match=r"model 'no_such' not found: expected a model folder path, a Hugging Face repo id"):
        resolve_model("no_such")
    with pytest.raises(ModelNotFoundError, match=r"model '  ' is empty"):
        resolve_model("  ")


def test_offline_errors_speak_library_terms_and_say_they_are_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("someone/not-cached", cache_dir=tmp_path / "hf")
    message = str(info.value)
    assert info.value.offline is True
    assert "'someone/not-cached' is not in the local Hugging Face cache" in message
    assert message.endswith("the bundled model 'shapes' needs no download") and "--" not in message
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("no_such")
    assert info.value.offline is False
