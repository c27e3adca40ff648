"""Vector quantisation: EMA codebooks (van den Oord et al. 2017), multi-head and residual (RQ-VAE).

Codebooks are learned by exponential moving averages of the assigned vectors (VQ-VAE appendix A.1),
not by gradients, so the only gradient-carrying term is the commitment loss on the encoder output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from dalle2_core.helpers import exists, l2norm


def _kmeans(samples: torch.Tensor, num_clusters: int, iters: int, use_cosine_sim: bool) -> torch.Tensor:
    """Lloyd's k-means on (n, d) samples -> (num_clusters, d) means, seeded by a random draw."""
    n = samples.shape[0]
    pick = torch.randint(0, n, (num_clusters,), device=samples.device) if n < num_clusters else (
        torch.randperm(n, device=samples.device)[:num_clusters]
    )
    means = samples[pick]
    for _ in range(iters):
        if use_cosine_sim:
            assign = (samples @ means.t()).argmax(dim=-1)
        else:
            assign = torch.cdist(samples, means).argmin(dim=-1)
        sums = torch.zeros_like(means).index_add_(0, assign, samples)
        counts = torch.bincount(assign, minlength=num_clusters).unsqueeze(-1)
        new_means = sums / counts.clamp(min=1)
        if use_cosine_sim:
            new_means = l2norm(new_means)
        # empty clusters keep their old mean rather than collapsing to zero
        means = torch.where(counts > 0, new_means, means)
    return means


class VectorQuantizer(nn.Module):
    """EMA vector quantiser with commitment loss (VQ-VAE, van den Oord et al. 2017, eq. 3 + A.1).

    `heads > 1` splits each (projected) vector into `heads` chunks, each quantised by its own
    codebook (multi-head VQ). `use_cosine_sim` quantises l2-normalised vectors against a
    normalised codebook (Yu et al. 2021, ViT-VQGAN section 3.2).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        heads: int = 1,
        decay: float = 0.8,
        commitment_weight: float = 1.0,
        use_cosine_sim: bool = False,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        threshold_ema_dead_code: float = 0.0,
        eps: float = 1e-5,
    ):
        super().__init__()
        if codebook_size < 1 or heads < 1:
            raise ValueError(f"codebook_size and heads must be >= 1, got {codebook_size} and {heads}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"vq decay must be in [0, 1), got {decay}")
        codebook_dim = codebook_dim if exists(codebook_dim) else dim // heads
        if codebook_dim * heads < 1:
            raise ValueError(f"dim {dim} cannot be split into {heads} heads; pass codebook_dim")
        inner = codebook_dim * heads
        self.project_in = nn.Linear(dim, inner) if inner != dim else nn.Identity()
        self.project_out = nn.Linear(inner, dim) if inner != dim else nn.Identity()

        self.dim, self.codebook_size, self.codebook_dim, self.heads = dim, codebook_size, codebook_dim, heads
        self.decay, self.commitment_weight, self.eps = decay, commitment_weight, eps
        self.use_cosine_sim, self.kmeans_iters = use_cosine_sim, kmeans_iters
        self.threshold_ema_dead_code = threshold_ema_dead_code

        embed = torch.randn(heads, codebook_size, codebook_dim)
        embed = l2norm(embed) if use_cosine_sim else embed
        self.register_buffer("embed", embed)
        self.register_buffer("embed_avg", embed.clone())
        self.register_buffer("cluster_size", torch.ones(heads, codebook_size))
        # a float flag, not bool: weight EMAs (torch's AveragedModel) lerp every buffer
        self.register_buffer("initted", torch.tensor(0.0 if kmeans_init else 1.0))

    @property
    def codebook(self) -> torch.Tensor:
        """(heads, codebook_size, codebook_dim); heads squeezed when there is one."""
        return self.embed[0] if self.heads == 1 else self.embed

    def _distances(self, x: torch.Tensor) -> torch.Tensor:
        """Lower is nearer: negative cosine similarity or squared euclidean distance. x: (h, n, d)."""
        embed = self.embed
        if self.use_cosine_sim:
            return -torch.einsum("hnd,hkd->hnk", x, embed)
        return (
            x.pow(2).sum(-1, keepdim=True)
            - 2 * torch.einsum("hnd,hkd->hnk", x, embed)
            + embed.pow(2).sum(-1).unsqueeze(1)
        )

    @torch.no_grad()
    def _init_from_kmeans(self, flat: torch.Tensor) -> None:
        means = torch.stack([_kmeans(f, self.codebook_size, self.kmeans_iters, self.use_cosine_sim) for f in flat])
        self.embed.copy_(means)
        self.embed_avg.copy_(means)
        self.cluster_size.fill_(1.0)
        self.initted.fill_(1.0)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        """EMA of cluster sizes and sums with Laplace smoothing (VQ-VAE appendix A.1)."""
        counts = torch.zeros_like(self.cluster_size).scatter_add_(1, indices, torch.ones_like(flat[..., 0]))  # (h, k)
        sums = torch.zeros_like(self.embed).scatter_add_(1, indices.unsqueeze(-1).expand_as(flat), flat)  # (h, k, d)
        self.cluster_size.lerp_(counts, 1 - self.decay)
        self.embed_avg.lerp_(sums, 1 - self.decay)
        total = self.cluster_size.sum(dim=-1, keepdim=True)
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        embed = self.embed_avg / smoothed.unsqueeze(-1)
        self.embed.copy_(l2norm(embed) if self.use_cosine_sim else embed)
        if self.threshold_ema_dead_code > 0:
            self._replace_dead_codes(flat)

    @torch.no_grad()
    def _replace_dead_codes(self, flat: torch.Tensor) -> None:
        # rarely chosen codes never move under EMA; reseeding them from the batch keeps them useful
        dead = self.cluster_size < self.threshold_ema_dead_code  # (h, k)
        for h in range(self.heads):
            num_dead = int(dead[h].sum())
            if num_dead == 0:
                continue
            samples = flat[h][torch.randint(0, flat.shape[1], (num_dead,), device=flat.device)]
            self.embed[h][dead[h]] = samples
            self.embed_avg[h][dead[h]] = samples * self.threshold_ema_dead_code
            self.cluster_size[h][dead[h]] = self.threshold_ema_dead_code

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(b, n) or (b, n, heads) code indices -> (b, n, dim) projected-out codes."""
        if self.heads == 1 and indices.ndim == 2:
            indices = indices.unsqueeze(-1)
        if indices.ndim != 3 or indices.shape[-1] != self.heads:
            raise ValueError(f"expected indices (b, n, {self.heads}) or (b, n) for one head, got {tuple(indices.shape)}")
        codes = torch.stack([self.embed[h][indices[..., h]] for h in range(self.heads)], dim=-2)
        return self.project_out(rearrange(codes, "b n h d -> b n (h d)"))  # (b, n, heads * d)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(b, n, dim) -> quantised (b, n, dim), indices (b, n) or (b, n, heads), commitment loss ()."""
        b = x.shape[0]
        x = self.project_in(x)
        heads_x = rearrange(x, "b n (h d) -> h (b n) d", h=self.heads)  # (heads, b*n, d)
        if self.use_cosine_sim:
            heads_x = l2norm(heads_x)

        # nearest codes and codebook statistics in the codebook's precision, even under autocast
        with torch.autocast(device_type=x.device.type, enabled=False):
            flat = heads_x.detach().to(self.embed.dtype)
            if self.training and float(self.initted) < 0.5:
                self._init_from_kmeans(flat)
            indices = self._distances(flat).argmin(dim=-1)  # (heads, b*n)
            quantized = torch.stack([self.embed[h][indices[h]] for h in range(self.heads)]).to(heads_x.dtype)
            if self.training:
                self._ema_update(flat, indices)

        commit_loss = F.mse_loss(heads_x, quantized.detach()) * self.commitment_weight
        # straight-through estimator: the decoder's gradient reaches the encoder unchanged
        quantized = heads_x + (quantized - heads_x).detach()

        quantized = rearrange(quantized, "h (b n) d -> b n (h d)", b=b)  # (b, n, heads * d)
        indices = rearrange(indices, "h (b n) -> b n h", b=b)
        if self.heads == 1:
            indices = indices.squeeze(-1)
        return self.project_out(quantized), indices, commit_loss


class ResidualVQ(nn.Module):
    """Residual quantisation: each stage quantises what the previous ones left over.

    SoundStream (Zeghidour et al. 2021, algorithm 1) / RQ-VAE (Lee et al. 2022, eq. 2). Only the
    first stage may use cosine similarity: residuals are not unit vectors.
    """

    def __init__(self, dim: int, num_quantizers: int, codebook_dim: int | None = None, heads: int = 1, **vq_kwargs):
        super().__init__()
        if num_quantizers < 1:
            raise ValueError(f"num_quantizers must be >= 1, got {num_quantizers}")
        codebook_dim = codebook_dim if exists(codebook_dim) else dim // heads
        inner = codebook_dim * heads
        self.project_in = nn.Linear(dim, inner) if inner != dim else nn.Identity()
        self.project_out = nn.Linear(inner, dim) if inner != dim else nn.Identity()
        use_cosine_sim = vq_kwargs.pop("use_cosine_sim", False)
        self.layers = nn.ModuleList(
            VectorQuantizer(inner, codebook_dim=codebook_dim, heads=heads, use_cosine_sim=use_cosine_sim and i == 0,
                            **vq_kwargs)
            for i in range(num_quantizers)
        )
        self.use_cosine_sim = use_cosine_sim

    @property
    def codebook(self) -> torch.Tensor:
        """(num_quantizers, [heads,] codebook_size, codebook_dim)."""
        return torch.stack([layer.codebook for layer in self.layers])

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(b, n, [heads,] num_quantizers) indices -> (b, n, dim) summed codes."""
        codes = sum(layer.indices_to_codes(indices[..., i]) for i, layer in enumerate(self.layers))
        return self.project_out(codes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(b, n, dim) -> quantised (b, n, dim), indices (b, n, [heads,] q), summed commitment loss."""
        x = self.project_in(x)
        if self.use_cosine_sim:
            x = l2norm(x)
        residual, codes = x, torch.zeros_like(x)
        all_indices, losses = [], []
        for layer in self.layers:
            q, idx, loss = layer(residual)
            residual = residual - q.detach()
            codes = codes + q.detach()
            all_indices.append(idx)
            losses.append(loss)
        # one straight-through step for the sum, so the encoder gradient is not scaled by the depth
        quantized = x + (codes - x).detach()
        return self.project_out(quantized), torch.stack(all_indices, dim=-1), torch.stack(losses).sum()


__all__ = ["ResidualVQ", "VectorQuantizer"]
