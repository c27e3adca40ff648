"""open_clip's tokenizer (what HFClipAdapter uses) against transformers' CLIPTokenizer with Karlo's "!" padding.

The ids were written by tests/fixtures/hf_clip/make_fixtures.py. open_clip does what OpenAI's (and
Kakao Brain's Karlo) tokenizer does; transformers' CLIPTokenizer differs in two documented ways: it
skips OpenAI's cleaning (ftfy, HTML unescaping), and it matches its padding token "!" in the prompt
itself, so every "!" becomes id 0 instead of its BPE token.
"""

import json
from pathlib import Path

import pytest
import torch

from dalle2_core.clip import PromptTruncatedWarning
from dalle2_core.clip.hf_clip_adapter import HFClipAdapter, check_tokenizer_folder
from dalle2_core.clip.tokenizer import clip_bpe_tokenizer
from dalle2_core.convert.materialize import build_on_meta

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "hf_clip" / "tokens.json").read_text(encoding="utf-8"))
ROWS = {row["prompt"]: row for row in FIXTURE["prompts"]}
CLEANED = {"“curly quotes” and ‘apostrophes’", "fish &amp; chips", "ＦＵＬＬＷＩＤＴＨ letters"}
BANG = "wow!! a cat!"
SAME = [p for p in ROWS if p not in CLEANED | {BANG}]


@pytest.fixture(scope="module")
def adapter():
    return build_on_meta(lambda: HFClipAdapter(vision=False))  # ViT-L-14's text tower; tokenising needs no weights


def test_fixture_covers_the_cases():
    assert FIXTURE["versions"]["transformers"] and len(SAME) == 6
    assert ROWS[""]["input_ids"][:3] == [49406, 49407, 0] and ROWS[SAME[-1]]["untruncated_length"] == 101


def test_ids_and_mask_equal_transformers(adapter):
    with pytest.warns(PromptTruncatedWarning, match=r"needs 101 tokens but the context is 77: 24 token\(s\) were dropped"):
        tokens = adapter.tokenize(SAME)
    assert tokens.shape == (len(SAME), 77) and tokens.dtype == torch.long
    assert tokens.tolist() == [ROWS[p]["input_ids"] for p in SAME]
    assert adapter.text_mask(tokens).long().tolist() == [ROWS[p]["attention_mask"] for p in SAME]
    assert tokens[-1, -1].item() == 49407  # truncated prompts keep their end-of-text token


def test_cleaning_is_openai_s(adapter):
    prompts = sorted(CLEANED)
    tokens = adapter.tokenize(prompts).tolist()
    for prompt, ids in zip(prompts, tokens):
        assert ids == ROWS[prompt]["input_ids_openai_cleaned"]  # transformers' ids of the ftfy + HTML-cleaned text
        assert ids != ROWS[prompt]["input_ids"]


def test_exclamation_marks_stay_text(adapter):
    tokens = adapter.tokenize(BANG)
    mask = adapter.text_mask(tokens)
    hf_ids, hf_mask = torch.tensor(ROWS[BANG]["input_ids"]), torch.tensor(ROWS[BANG]["attention_mask"]).bool()
    assert (hf_ids[hf_mask] == 0).sum() == 3  # transformers: each "!" is the padding id, inside the mask
    assert (tokens[mask] == 0).sum() == 0 and mask.sum() == 7  # open_clip: "!!" and "!" are BPE tokens
    assert clip_bpe_tokenizer(77).decode(tokens[0, 1:6].tolist()).strip() == "wow !! a cat !"  # BPE words


def write_tokenizer(folder: Path, **settings) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(settings.pop("vocab", clip_bpe_tokenizer(77).encoder)))
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": settings.pop("pad", "!")}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, **settings}))
    return folder


def test_tokenizer_folders_are_checked(tmp_path):
    check_tokenizer_folder(write_tokenizer(tmp_path / "karlo"), 77)
    check_tokenizer_folder(write_tokenizer(tmp_path / "dict", pad={"content": "!", "lstrip": False}), 77)
    with pytest.raises(ValueError, match=r"pads with '<\|endoftext\|>'; supported: '!' \(id 0, Karlo's padding\)"):
        check_tokenizer_folder(write_tokenizer(tmp_path / "sd", pad="<|endoftext|>"), 77)
    with pytest.raises(ValueError, match=r"has model_max_length 64; the text tower reads 77"):
        check_tokenizer_folder(write_tokenizer(tmp_path / "short", model_max_length=64), 77)
    vocab = dict(clip_bpe_tokenizer(77).encoder, extra=49408)
    with pytest.raises(ValueError, match=r"vocab\.json is not OpenAI CLIP's BPE vocabulary"):
        check_tokenizer_folder(write_tokenizer(tmp_path / "other", vocab=vocab), 77)
