"""OpenAI CLIP's BPE (`ClipTokenizer`) against transformers, on tokenizer folders transformers itself wrote.

tests/fixtures/tokenizers/make_fixtures.py wrote the folders with transformers 4.57 (`karlo/`: vocab.json + merges.txt,
"!" padding, as Karlo's repo ships it; `kandinsky-2-2-prior/`: both layouts, "<|endoftext|>" padding) and recorded
the ids, attention masks and untruncated lengths of prompts.json (51 prompts) from 4.57's Python `CLIPTokenizer`
and `CLIPTokenizerFast` and from 5.25's `CLIPTokenizer` (the Rust one), also on the tokenizer.json-only folder
diffusers 0.42 / transformers 5.25 saved with the tiny Karlo pipeline (tests/fixtures/hub).
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from dalle2_core.clip import PromptTruncatedWarning
from dalle2_core.clip.hf_clip_adapter import HFClipAdapter, check_tokenizer_folder
from dalle2_core.clip.tokenizer import ClipTokenizer, TokenizerFolderError, read_tokenizer_folder
from dalle2_core.convert.materialize import build_on_meta

FIXTURES = Path(__file__).parents[1] / "fixtures"
TOKENIZERS = FIXTURES / "tokenizers"
FOLDERS = {
    "karlo": TOKENIZERS / "karlo",  # vocab.json + merges.txt
    "kandinsky-2-2-prior": TOKENIZERS / "kandinsky-2-2-prior",  # both layouts
    "karlo-pipeline": FIXTURES / "hub" / "kakaobrain--karlo-v1-alpha" / "tokenizer",  # tokenizer.json alone
}
PROMPTS = json.loads((TOKENIZERS / "prompts.json").read_text(encoding="utf-8"))
RESULTS = {
    f"transformers{major}/{key}": value
    for major in (4, 5)
    for key, value in json.loads((TOKENIZERS / f"tokens-transformers{major}.json").read_text(encoding="utf-8"))["results"].items()
}
# transformers 4's Python CLIPTokenizer cleans text with ftfy + HTML unescaping (ftfy was installed); the Rust one does not
CLEANED = {"Ελληνικά γράμματα και σίγμα ΣΟΦΟΣ", "中文提示词：一只可爱的猫", "“curly quotes” and ‘apostrophes’",
           "fish &amp; chips &lt;b&gt;", "ＦＵＬＬＷＩＤＴＨ letters ａｎｄ ｄｉｇｉｔｓ １２３"}


def rows(result: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' padded ids and attention masks, rebuilt from the fixture (ids up to the mask's end, then padding)."""
    n = result["length"]
    ids = torch.tensor([r + [result["pad_id"]] * (n - len(r)) for r in result["ids"]])
    mask = torch.tensor([[True] * len(r) + [False] * (n - len(r)) for r in result["ids"]])
    return ids, mask


def test_the_fixtures_cover_the_cases():
    assert len(PROMPTS) == 51 and "" in PROMPTS and any(len(p.split()) > 100 for p in PROMPTS)
    assert any("!" in p for p in PROMPTS) and any("🐸" in p for p in PROMPTS)
    assert set(RESULTS) == {
        "transformers4/karlo/CLIPTokenizer", "transformers4/karlo/CLIPTokenizerFast",
        "transformers4/kandinsky-2-2-prior/CLIPTokenizer", "transformers4/kandinsky-2-2-prior/CLIPTokenizerFast",
        "transformers5/karlo/CLIPTokenizer", "transformers5/kandinsky-2-2-prior/CLIPTokenizer",
        "transformers5/karlo-pipeline/CLIPTokenizer",
    }
    assert sorted(p.name for p in FOLDERS["karlo"].iterdir()) == ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    assert sorted(p.name for p in FOLDERS["karlo-pipeline"].iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert (FOLDERS["kandinsky-2-2-prior"] / "tokenizer.json").is_file() and (FOLDERS["kandinsky-2-2-prior"] / "vocab.json").is_file()


@pytest.mark.parametrize("key", sorted(RESULTS))
def test_ids_masks_and_lengths_equal_transformers(key):
    folder = key.split("/")[1]
    tokenizer = ClipTokenizer.from_folder(FOLDERS[folder])
    result = RESULTS[key]
    assert (tokenizer.pad_token, tokenizer.pad_id, tokenizer.context_length) == (result["pad_token"], result["pad_id"], 77)
    ids, mask = tokenizer.encode(PROMPTS)
    expected_ids, expected_mask = rows(result)
    slow = key.startswith("transformers4/") and key.endswith("/CLIPTokenizer")
    differ = {p for p, a, b in zip(PROMPTS, ids.tolist(), expected_ids.tolist()) if a != b}
    assert differ == (CLEANED if slow else set())  # the Python tokenizer's ftfy cleaning; nothing else differs
    same = [i for i, p in enumerate(PROMPTS) if p not in differ]
    assert torch.equal(ids[same], expected_ids[same]) and torch.equal(mask[same], expected_mask[same])
    assert [tokenizer.token_count(p) for p in PROMPTS if p not in differ] == [
        n for p, n in zip(PROMPTS, result["untruncated"]) if p not in differ
    ]


def test_the_padding_token_is_special_text_too():
    karlo, kandinsky = ClipTokenizer.from_folder(FOLDERS["karlo"]), ClipTokenizer.from_folder(FOLDERS["kandinsky-2-2-prior"])
    ids, mask = karlo.encode("wow!! a cat!")
    assert ids[0, :8].tolist() == [49406, 2781, 0, 0, 320, 2368, 0, 49407] and mask.sum() == 8  # each "!" is id 0, in the mask
    ids, mask = kandinsky.encode("wow!! a cat!")
    assert ids[0, :6].tolist() == [49406, 2781, 748, 320, 2368, 256] and (ids[0, 7:] == 49407).all() and mask.sum() == 7
    plain = ClipTokenizer(77, pad_token=None)  # open_clip's convention (the project CLIP): pad with 0, "!" stays text
    assert plain("wow!! a cat!")[0, :8].tolist() == [49406, 2781, 748, 320, 2368, 256, 49407, 0]


def test_truncation_keeps_the_end_token_and_warns():
    adapter = build_on_meta(lambda: HFClipAdapter(vision=False))  # ViT-L-14's text tower; tokenising needs no weights
    long = PROMPTS[-1]
    with pytest.warns(PromptTruncatedWarning, match=r"needs 137 tokens but the context is 77: 60 token\(s\) were dropped"):
        tokens = adapter.tokenize([long, "a cat"])
    assert tokens.shape == (2, 77) and tokens[0, -1] == 49407 and tokens[1, 3] == 49407
    assert adapter.text_mask(tokens).sum(-1).tolist() == [77, 4]


def test_the_adapter_pads_with_its_folder_s_token():
    karlo = build_on_meta(lambda: HFClipAdapter(vision=False, pad_token="!"))
    kandinsky = build_on_meta(lambda: HFClipAdapter(vision=False, pad_token="<|endoftext|>"))
    for adapter, pad in ((karlo, 0), (kandinsky, 49407)):
        ids = adapter.tokenize(["a red cube", ""])
        assert (ids[:, -1] == pad).all() and adapter.text_mask(ids).sum(-1).tolist() == [5, 2]
    headless = torch.tensor([[320, 736, 0, 0]])  # ids without an end token: every id but the padding id ("!": 0)
    assert karlo.text_mask(headless).tolist() == [[True, True, False, False]]


def copy_folder(tmp_path: Path, name: str, keep: tuple[str, ...]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for file in keep:
        shutil.copyfile(FOLDERS[name if name in FOLDERS else "kandinsky-2-2-prior"] / file, folder / file)
    return folder


def test_either_layout_alone_is_read(tmp_path):
    # the layouts of the both-layouts folder, one at a time
    json_only = copy_folder(tmp_path, "kandinsky-2-2-prior", ("tokenizer.json", "tokenizer_config.json"))
    assert read_tokenizer_folder(json_only) == {"pad_token": "<|endoftext|>", "model_max_length": 77}
    (tmp_path / "vocab").mkdir()
    for file in ("vocab.json", "merges.txt", "special_tokens_map.json"):
        shutil.copyfile(FOLDERS["kandinsky-2-2-prior"] / file, tmp_path / "vocab" / file)
    assert read_tokenizer_folder(tmp_path / "vocab") == {"pad_token": "<|endoftext|>", "model_max_length": None}
    assert check_tokenizer_folder(FOLDERS["karlo"], 77) == "!" and check_tokenizer_folder(FOLDERS["karlo-pipeline"], 77) == "!"


def edited(tmp_path: Path, source: str, file: str, edit) -> Path:
    folder = shutil.copytree(FOLDERS[source], tmp_path / f"{len(list(tmp_path.iterdir()))}" / f"{source}-{file}")
    path = folder / file
    if file.endswith(".json"):
        path.write_text(json.dumps(edit(json.loads(path.read_text(encoding="utf-8")))), encoding="utf-8")
    else:
        path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")
    return folder


def open_clip_names(vocab: dict) -> dict:
    renamed = {"<|startoftext|>": "<start_of_text>", "<|endoftext|>": "<end_of_text>"}
    return {renamed.get(token, token): i for token, i in vocab.items()}


def test_folders_that_are_not_openai_s_bpe_are_refused_naming_file_and_entry(tmp_path):
    cases = [
        ("karlo", "vocab.json", open_clip_names,
         r"karlo-vocab\.json/vocab\.json is not OpenAI CLIP's BPE vocabulary: entry '<\|startoftext\|>' is absent; "
         r"OpenAI's BPE has it at id 49406 \(here id 49406 is '<start_of_text>'\)$"),
        ("karlo", "merges.txt", lambda text: text.replace("\ni n\n", "\nn i\n", 1),
         r"karlo-merges\.txt/merges\.txt is not OpenAI CLIP's BPE: merge 0 is 'n i'; OpenAI's BPE has 'i n'$"),
        ("karlo-pipeline", "tokenizer.json", lambda d: {**d, "model": {**d["model"], "vocab": {**d["model"]["vocab"], "<cat-toy>": 49408}}},
         r"tokenizer\.json is not OpenAI CLIP's BPE: entry '<cat-toy>' \(id 49408\) is not in OpenAI's BPE$"),
        ("karlo-pipeline", "tokenizer.json", lambda d: {**d, "normalizer": None},
         r"tokenizer\.json is not OpenAI CLIP's BPE: normalizer is null; OpenAI's CLIP tokenizer has \{\"type\": \"Sequence\""),
        ("karlo-pipeline", "tokenizer.json", lambda d: {**d, "added_tokens": [*d["added_tokens"], {"id": 49408, "content": "<cat-toy>"}]},
         r"tokenizer\.json is not OpenAI CLIP's BPE: added token '<cat-toy>' \(id 49408\) is not in it$"),
        ("karlo-pipeline", "tokenizer_config.json", lambda d: {**d, "model_max_length": 64},
         r"has model_max_length 64; the text tower reads 77$"),
        ("karlo", "special_tokens_map.json", lambda d: {**d, "pad_token": "<pad>"},
         r"names two padding tokens: tokenizer_config\.json '!', special_tokens_map\.json '<pad>'$"),
        ("karlo", "special_tokens_map.json", lambda d: {**d, "eos_token": "</s>"},
         r"has eos_token '</s>'; OpenAI's CLIP has '<\|endoftext\|>'$"),
    ]
    for source, file, edit, message in cases:
        folder = edited(tmp_path, source, file, edit)
        with pytest.raises(ValueError, match=message) as err:
            check_tokenizer_folder(folder, 77)
        assert isinstance(err.value, TokenizerFolderError) and "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerFolderError, match=r"has neither tokenizer\.json nor vocab\.json \+ merges\.txt"):
        read_tokenizer_folder(tmp_path / "empty")


def test_the_project_clip_keeps_open_clip_s_ids_on_every_shapes_prompt():
    """The bundled shapes model was trained with open_clip's tokenizer: its pixels need the same ids."""
    import types

    from open_clip.tokenizer import SimpleTokenizer

    from dalle2_core.clip import tokenizer as module
    from dalle2_core.shapes.world import PHRASINGS, all_compositions

    prompts = sorted({c.caption(i) for c in all_compositions() for i in range(len(PHRASINGS))})
    prompts += ["a large red circle on the left on a blue background", "A Red Circle!", "fish & chips", ""]
    ours = ClipTokenizer(32, pad_token=None)(prompts)
    assert len(prompts) > 6000 and torch.equal(ours, SimpleTokenizer(context_length=32)(prompts))
    assert module.openai_merges_file().name == "bpe_simple_vocab_16e6.txt.gz"
    assert not any(isinstance(v, types.ModuleType) and v.__name__.startswith("open_clip") for v in vars(module).values())
