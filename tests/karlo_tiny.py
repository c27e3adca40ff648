"""A tiny diffusers UnCLIPPipeline folder with every component Karlo's Hub repo has, for converter and CLI tests.

`tests/fixtures/karlo/tiny` (written with diffusers by `tests/fixtures/karlo/make_fixtures.py`) holds the prior,
text_proj, decoder and super-resolution U-Nets; this adds what the converter also reads, built here without
transformers: a transformers-layout CLIP text tower (random N(0, 0.02) weights under transformers' names and
shapes, `convert.hf_clip_keys.transformers_shapes`) whose width and context fit the tiny prior (8 wide, 5
tokens), with OpenAI's full vocabulary so real prompts tokenize, and the tokenizer folder Karlo ships
(OpenAI's BPE vocabulary, "!" padding).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from dalle2_core.clip.tokenizer import CLIP_VOCAB_SIZE, clip_bpe_tokenizer
from dalle2_core.convert.hf_clip_keys import transformers_shapes

KARLO_TINY = Path(__file__).parent / "fixtures" / "karlo" / "tiny"
CONTEXT = 5  # the tiny prior's num_embeddings: text tokens per prompt
TEXT_CONFIG = {
    "architectures": ["CLIPTextModelWithProjection"], "model_type": "clip_text_model", "hidden_act": "quick_gelu",
    "hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2, "num_hidden_layers": 1, "projection_dim": 8,
    "max_position_embeddings": CONTEXT, "vocab_size": CLIP_VOCAB_SIZE, "layer_norm_eps": 1e-5, "attention_dropout": 0.0,
    "bos_token_id": 49406, "eos_token_id": 2, "pad_token_id": 0,  # eos 2: pooled at the argmax id, as OpenAI's configs
}


def tiny_unclip_folder(dest: Path, seed: int = 0) -> Path:
    """`dest`: the tiny diffusers Karlo with a text_encoder/ and a tokenizer/ folder."""
    shutil.copytree(KARLO_TINY, dest)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in sorted(transformers_shapes(TEXT_CONFIG, "text").items()):
        if name.endswith("layer_norm.weight") or "layer_norm1.weight" in name or "layer_norm2.weight" in name:
            tensors[name] = 1 + 0.02 * torch.randn(shape, generator=generator)
        else:
            tensors[name] = 0.02 * torch.randn(shape, generator=generator)
    (dest / "text_encoder").mkdir()
    save_file(tensors, str(dest / "text_encoder" / "model.safetensors"))
    (dest / "text_encoder" / "config.json").write_text(json.dumps(TEXT_CONFIG))
    tokenizer = dest / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "vocab.json").write_text(json.dumps(clip_bpe_tokenizer(CONTEXT).encoder))
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({"pad_token": "!", "model_max_length": CONTEXT}))
    index = json.loads((dest / "model_index.json").read_text())
    index.update(text_encoder=["transformers", "CLIPTextModelWithProjection"], tokenizer=["transformers", "CLIPTokenizer"])
    (dest / "model_index.json").write_text(json.dumps(index, indent=2))
    return dest
