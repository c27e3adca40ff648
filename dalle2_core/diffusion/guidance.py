"""Classifier-free guidance (Ho & Salimans 2022) and the x_0 post-processing used while sampling."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .gaussian import DenoiseFn


def classifier_free_guidance(
    net: Callable[..., torch.Tensor],
    cond_scale: float,
    guide_variance: bool = False,
    *,
    encode: Callable[..., dict] | None = None,
    uncond: dict | None = None,
    max_batch: int | None = None,
    **cond,
):
    """A model function (x, t) -> uncond + (cond - uncond) · cond_scale, both branches in one forward.

    The unconditional branch is either the network's learned null condition or conditions given
    explicitly:
      - `uncond=None`: `net(x, t, cond_drop_mask=..., **cond)` takes a boolean mask (b,), True = the
        learned null condition; the batched forward is net(cat[x, x], cat[t, t], cond_drop_mask=
        [False]*b + [True]*b, **{k: cat[cond[k], cond[k]]}).
      - `uncond={...}`: the unconditional half's own keywords, with the same keys and shapes as `cond`
        (an empty prompt's text encoding, a negative prompt, a learned null embedding the caller
        looked up); the batched forward is net(cat[x, x], cat[t, t], **{k: cat[cond[k], uncond[k]]}).
        No `cond_drop_mask` is added (a mask in both dicts is concatenated like any other tensor);
        non-tensor values must be equal in both.
    The conditional half comes first. `cond_scale == 1` runs only the conditional branch, `net(x, t,
    **cond)` (plus an all-False `cond_drop_mask` when `uncond` is None).

    With learned variance (output has twice x's channels) only the prediction half is guided and
    the variance comes from the conditional branch, as in GLIDE; `guide_variance=True` mixes every
    channel (what the DALLE2-pytorch 1.1.0 LAION decoder did).

    `encode(**kwargs) -> dict` (optional) turns the batched conditions (the keywords above, mask
    included) into the keywords `net` is called with, once on the first call rather than at every
    step, so conditioning that depends on neither x_t nor t (text tokens, say) is computed once per
    sampling run; the model function is then tied to the batch size of its first call.

    `max_batch` (optional) caps the rows of one network call: a larger batched forward runs in chunks of
    at most that many rows, one after the other, so only one chunk's activations are alive at a time
    (the memory of sequential branches, at the time of smaller batches). Tensor keywords whose first
    dimension is the batch are sliced with x; other values are passed whole to every chunk.
    """
    scale = _finite_scale(cond_scale)
    if uncond is None and "cond_drop_mask" in cond:
        raise ValueError("cond_drop_mask is set by classifier_free_guidance itself; pass uncond= to give both halves explicitly")
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ValueError(f"max_batch must be None or a positive int, got {max_batch!r}")
    conditions = _Conditions(cond, uncond, 1 if scale == 1.0 else 2, encode)

    if scale == 1.0:

        def conditional(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return _chunked(net, x, t, conditions(x.shape[0], x.device), max_batch)

        return conditional

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        out = _chunked(net, torch.cat([x, x]), torch.cat([t, t]), conditions(b, x.device), max_batch)  # (2b, c, ...)
        return _mix(out, x, scale, guide_variance)

    return guided


def _finite_scale(cond_scale) -> float:
    try:
        scale = float(cond_scale)
    except (TypeError, ValueError):
        raise ValueError(f"cond_scale must be a finite number, got {cond_scale!r}") from None
    if not math.isfinite(scale):
        raise ValueError(f"cond_scale must be a finite number, got {cond_scale!r}")
    return scale


class _Conditions:
    """The keywords of the (guided_batch · b) forward, conditional half first; with `encode`, encoded on the
    first call and reused (the model function is then tied to that batch size)."""

    def __init__(self, cond: dict, uncond: dict | None, guided_batch: int, encode: Callable[..., dict] | None):
        self.branches, self.learned_null = _branches(cond, uncond, guided_batch), uncond is None
        self.guided_batch, self.encode = guided_batch, encode
        self.batch: int | None = None
        self.encoded: dict | None = None

    def __call__(self, b: int, device: torch.device) -> dict:
        if self.encoded is not None:
            if self.batch != b:
                raise ValueError(f"this model function encoded its conditions for batch {self.batch}, got batch {b}")
            return self.encoded
        kwargs = dict(self.branches)
        if self.learned_null:
            kwargs["cond_drop_mask"] = torch.arange(self.guided_batch * b, device=device) >= b  # (guided_batch · b,)
        if self.encode is None:
            return kwargs
        self.batch, self.encoded = b, self.encode(**kwargs)
        return self.encoded


def _mix(out: torch.Tensor, x: torch.Tensor, scale: float, guide_variance: bool) -> torch.Tensor:
    """uncond + (cond - uncond) · scale from the batched output (2b, ...); a learned variance half, unless
    `guide_variance`, comes from the conditional branch."""
    b = x.shape[0]
    cond_out, uncond_out = out[:b], out[b:]
    mixed = (cond_out - uncond_out).mul_(scale).add_(uncond_out)  # in the difference's buffer: the same bits, two temporaries less
    learned_variance = x.ndim > 1 and out.ndim > 1 and out.shape[1] == 2 * x.shape[1]
    if not learned_variance or guide_variance:
        return mixed
    c = x.shape[1]
    return torch.cat([mixed[:, :c], cond_out[:, c:]], dim=1)


def _chunked(net: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor, kwargs: dict, max_batch: int | None):
    """net(x, t, **kwargs), in row chunks of at most `max_batch` (each chunk's activations freed before the next)."""
    n = x.shape[0]
    if max_batch is None or n <= max_batch:
        return net(x, t, **kwargs)
    outs = []
    for start in range(0, n, max_batch):
        rows = slice(start, start + max_batch)
        part = {k: v[rows] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n else v for k, v in kwargs.items()}
        outs.append(net(x[rows], t[rows], **part))
    return torch.cat(outs)


def _branches(cond: dict, uncond: dict | None, guided_batch: int) -> dict:
    """The batched conditions: `cond` alone, `cond` twice (learned null), or [cond, uncond]."""
    if guided_batch == 1:
        return cond
    if uncond is None:
        return {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
    return _paired(cond, uncond)


def _paired(cond: dict, uncond: dict) -> dict:
    """{k: cat[cond[k], uncond[k]]}, after checking that both halves carry the same keys and shapes."""
    if set(cond) != set(uncond):
        raise ValueError(
            f"uncond must carry the same conditions as cond; cond has {sorted(cond)}, uncond has {sorted(uncond)}"
        )
    paired = {}
    for key, value in cond.items():
        other = uncond[key]
        if isinstance(value, torch.Tensor) != isinstance(other, torch.Tensor):
            raise ValueError(f"uncond[{key!r}] must be a tensor exactly when cond[{key!r}] is one")
        if not isinstance(value, torch.Tensor):
            if other != value:
                raise ValueError(f"uncond[{key!r}]={other!r} differs from cond[{key!r}]={value!r}; non-tensor conditions must be equal")
            paired[key] = value
            continue
        if other.shape != value.shape:
            raise ValueError(f"uncond[{key!r}] has shape {tuple(other.shape)}; cond[{key!r}] has {tuple(value.shape)}")
        paired[key] = torch.cat([value, other])
    return paired


def static_clamping(limit: float) -> DenoiseFn:
    """A `denoise_fn` clamping predicted x_0 to [-limit, limit] (Ho et al. 2020 sampling; Karlo clamps its
    prior's standardised embeddings to ±5 in diffusers, ±10 in the original code)."""
    try:
        limit = float(limit)
    except (TypeError, ValueError):
        raise ValueError(f"clamp limit must be a positive number, got {limit!r}") from None
    if not (math.isfinite(limit) and limit > 0):
        raise ValueError(f"clamp limit must be a positive finite number, got {limit!r}")
    return lambda x_start: x_start.clamp(-limit, limit)


def static_clamp(x_start: torch.Tensor) -> torch.Tensor:
    """Clamp predicted images to the data range [-1, 1] (Ho et al. 2020 sampling)."""
    return x_start.clamp(-1.0, 1.0)


def dynamic_threshold(x_start: torch.Tensor, percentile: float = 0.95) -> torch.Tensor:
    """Imagen (Saharia et al. 2022 §2.3): s = max(1, percentile p of |x_0|) per sample; clamp to ±s, divide by s."""
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must be in (0, 1], got {percentile!r}")
    flat = x_start.reshape(x_start.shape[0], -1).abs()  # (b, c·h·w)
    # quantile needs float32/64; half-precision inputs are promoted for this one reduction
    s = torch.quantile(flat.float() if flat.dtype not in (torch.float32, torch.float64) else flat, percentile, dim=1)
    s = s.clamp(min=1.0).to(x_start.dtype).reshape(-1, *((1,) * (x_start.ndim - 1)))  # (b, 1, ..., 1)
    return x_start.clamp(-s, s) / s


def dynamic_thresholding(percentile: float = 0.95) -> DenoiseFn:
    """`dynamic_threshold` at a fixed percentile, as a `denoise_fn` for the samplers."""
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must be in (0, 1], got {percentile!r}")
    return lambda x_start: dynamic_threshold(x_start, percentile)


__all__ = ["classifier_free_guidance", "dynamic_threshold", "dynamic_thresholding", "static_clamp", "static_clamping"]
