"""Layers shared by the networks: layer norms, SDPA attention, rotary, T5 bias, SwiGLU, embeddings."""

from dalle2_core.nn.attention import Attention, RelPosBias
from dalle2_core.nn.embedding import MLP, SinusoidalPosEmb
from dalle2_core.nn.feedforward import FeedForward, SwiGLU
from dalle2_core.nn.inference import compile_for_inference, prefer_channels_last
from dalle2_core.nn.norm import ChanLayerNorm, LayerNorm
from dalle2_core.nn.rotary import RotaryEmbedding
from dalle2_core.nn.transformer import CausalTransformer, CausalTransformerConfig, PrefixCache

__all__ = [
    "MLP",
    "Attention",
    "CausalTransformer",
    "CausalTransformerConfig",
    "ChanLayerNorm",
    "FeedForward",
    "LayerNorm",
    "PrefixCache",
    "RelPosBias",
    "RotaryEmbedding",
    "SinusoidalPosEmb",
    "SwiGLU",
    "compile_for_inference",
    "prefer_channels_last",
]
