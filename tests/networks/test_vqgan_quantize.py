"""EMA vector quantisers: codebook learning, commitment loss, straight-through gradients, residual and multi-head."""

import torch

from dalle2_core.vqgan.quantize import ResidualVQ, VectorQuantizer


def latents() -> torch.Tensor:
    return torch.randn(4, 64, 8, generator=torch.Generator().manual_seed(0))  # (b, n, d)


def quantisation_mse(quantizer, x: torch.Tensor, train_steps: int) -> float:
    quantizer.train()
    for _ in range(train_steps):
        quantizer(x)
    quantizer.eval()
    with torch.no_grad():
        out, _, _ = quantizer(x)
    return float(((out - x) ** 2).mean())


def test_ema_updates_pull_the_codebook_onto_the_data():
    torch.manual_seed(1)
    vq = VectorQuantizer(8, codebook_size=16)
    x = latents()
    before = quantisation_mse(vq, x, 0)
    after = quantisation_mse(vq, x, 30)
    # measured: 0.78 with the random codebook, 0.54 after 30 EMA steps
    assert before > 0.7 and after < 0.6


def test_ema_step_matches_the_vq_vae_update_rule():
    torch.manual_seed(0)
    vq = VectorQuantizer(2, codebook_size=2, decay=0.5, eps=0.0)
    vq.embed.copy_(torch.tensor([[[0.0, 0.0], [10.0, 10.0]]]))
    vq.embed_avg.copy_(vq.embed)
    x = torch.tensor([[[1.0, 1.0], [3.0, 1.0], [9.0, 9.0]]])  # two points near code 0, one near code 1
    _, indices, _ = vq.train()(x)
    assert indices.tolist() == [[0, 0, 1]]
    # N <- 0.5 * 1 + 0.5 * count ; m <- 0.5 * e + 0.5 * sum ; e = m / N
    torch.testing.assert_close(vq.cluster_size, torch.tensor([[1.5, 1.0]]))
    torch.testing.assert_close(vq.embed, torch.tensor([[[2.0 / 1.5, 1.0 / 1.5], [9.5, 9.5]]]))


def test_commitment_loss_and_straight_through_gradient():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, codebook_size=16, commitment_weight=0.25).eval()
    x = latents().requires_grad_()
    out, indices, loss = vq(x)
    codes = vq.codebook[indices]  # (b, n, d)
    torch.testing.assert_close(out, codes)
    torch.testing.assert_close(loss, 0.25 * ((x - codes) ** 2).mean())
    # the output's gradient passes to the input untouched (straight-through); the loss adds its own
    (grad_out,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(grad_out, torch.ones_like(x))


def test_kmeans_init_runs_once_on_the_first_training_batch():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, codebook_size=16, kmeans_init=True)
    x = latents()
    assert float(vq.initted) == 0.0
    mse = quantisation_mse(vq, x, 1)
    assert float(vq.initted) == 1.0
    # measured 0.53: k-means on the batch beats 30 EMA steps from a random codebook
    assert mse < 0.56


def test_residual_quantisation_beats_a_single_codebook():
    x = latents()
    torch.manual_seed(1)
    single = quantisation_mse(VectorQuantizer(8, codebook_size=16, kmeans_init=True), x, 10)
    torch.manual_seed(1)
    rvq = ResidualVQ(8, num_quantizers=4, codebook_size=16, kmeans_init=True)
    residual = quantisation_mse(rvq, x, 10)
    # measured: 0.53 for one codebook, 0.078 for four residual stages of the same size
    assert residual < 0.5 * single
    _, indices, loss = rvq(x)
    assert indices.shape == (4, 64, 4) and int(indices.max()) < 16 and loss.item() > 0
    torch.testing.assert_close(rvq.indices_to_codes(indices), rvq(x)[0])


def test_residual_gradient_is_not_scaled_by_depth():
    rvq = ResidualVQ(8, num_quantizers=3, codebook_size=4).eval()
    x = latents().requires_grad_()
    (grad,) = torch.autograd.grad(rvq(x)[0].sum(), x)
    torch.testing.assert_close(grad, torch.ones_like(x))


def test_multi_head_uses_one_codebook_per_head():
    torch.manual_seed(1)
    x = latents()
    vq = VectorQuantizer(8, codebook_size=16, heads=2, kmeans_init=True)
    mse = quantisation_mse(vq, x, 10)
    out, indices, _ = vq(x)
    assert vq.codebook.shape == (2, 16, 4) and indices.shape == (4, 64, 2)
    assert mse < 0.35  # measured 0.31: two 4-d heads of 16 codes act like 256 codes
    torch.testing.assert_close(vq.indices_to_codes(indices), out)


def test_cosine_sim_quantises_onto_the_unit_sphere():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, codebook_size=16, use_cosine_sim=True, kmeans_init=True)
    quantisation_mse(vq, latents(), 2)
    out, _, _ = vq(latents())
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4, 64))


def test_dead_codes_are_reseeded_from_the_batch():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, codebook_size=16, threshold_ema_dead_code=0.5)
    vq.embed[0, 3] = 1e3  # never the nearest code
    vq.train()(latents())
    assert float(vq.embed[0, 3].abs().max()) < 10 and float(vq.cluster_size[0, 3]) >= 0.5


def test_codebook_statistics_stay_float32_under_autocast():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, codebook_size=16, codebook_dim=4, kmeans_init=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, indices, loss = vq.train()(latents())
    assert vq.embed.dtype == vq.cluster_size.dtype == torch.float32
    assert torch.isfinite(loss) and int(indices.max()) < 16
    # k-means init sets 16 counts of 1, then one EMA step over 256 tokens: 0.8 * 16 + 0.2 * 256
    torch.testing.assert_close(vq.cluster_size.sum(), torch.tensor(64.0))
