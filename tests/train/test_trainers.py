"""Trainer mechanics on small stand-in networks: per-net updates, EMA, accumulation, resume."""

import copy

import pytest
import torch
from torch import nn

from dalle2_core.train import EMA, DecoderTrainer, DiffusionPriorTrainer
from dalle2_core.train.optim import make_optimizer, warmup_cosine_schedule


class TwoNetDecoder(nn.Module):
    """Stands in for `Decoder`: a loss per unet number, and `sample` from the current unets."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.unets = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    def forward(self, images, unet_number):
        return (self.unets[unet_number - 1](images) - images.flip(-1)).pow(2).mean()

    def sample(self, x):
        return self.unets[-1](self.unets[0](x))


class Prior(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 4)

    def forward(self, x):
        return (self.net(x) - 2 * x).pow(2).mean()

    def sample(self, x):
        return self.net(x)


def test_update_touches_only_its_unet():
    decoder = TwoNetDecoder()
    trainer = DecoderTrainer(decoder, lr=1e-3, use_ema=False)
    before = copy.deepcopy(decoder.unets[1].state_dict())
    x = torch.randn(8, 4)
    trainer(x, unet_number=1).backward()
    trainer.update(1)
    for key, value in decoder.unets[1].state_dict().items():
        assert torch.equal(value, before[key])
    assert trainer.num_steps_taken(0) == 1 and trainer.num_steps_taken(1) == 0


def test_unet_number_is_validated():
    trainer = DecoderTrainer(TwoNetDecoder(), use_ema=False)
    with pytest.raises(ValueError, match="unet_number 3"):
        trainer(torch.randn(2, 4), unet_number=3)
    with pytest.raises(ValueError, match="unet_number None"):
        trainer.update()


def test_ema_tracks_then_averages():
    net = nn.Linear(1, 1, bias=False)
    ema = EMA(net, beta=0.5, update_after_step=1, update_every=1)
    with torch.no_grad():
        net.weight.fill_(2.0)
    ema.update(net)  # warm-up: copies
    assert ema.ema_model.weight.item() == 2.0
    with torch.no_grad():
        net.weight.fill_(4.0)
    ema.update(net)  # AveragedModel's first update copies
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema.update(net)  # 0.5 * 4 + 0.5 * 0
    assert ema.ema_model.weight.item() == pytest.approx(2.0)


def test_sample_uses_ema_weights_and_restores_online_ones():
    decoder = TwoNetDecoder()
    trainer = DecoderTrainer(decoder, lr=1e-2, ema_beta=0.9, ema_update_after_step=0, ema_update_every=1)
    x = torch.randn(8, 4)
    for _ in range(5):
        for n in (1, 2):
            trainer(x, unet_number=n).backward()
            trainer.update(n)
    online = copy.deepcopy(decoder.state_dict())
    ema = [e.ema_model for e in trainer.emas]
    expected = ema[1](ema[0](x))
    assert torch.allclose(trainer.sample(x), expected)
    assert not torch.allclose(trainer.sample(x, use_non_ema=True), expected)
    for key, value in decoder.state_dict().items():  # the online weights are back
        assert torch.equal(value, online[key]), key


def test_grad_accumulation_matches_the_full_batch():
    x = torch.randn(8, 4)
    full = Prior()
    t_full = DiffusionPriorTrainer(full, lr=1e-2, use_ema=False)
    t_full(x).backward()
    t_full.update()

    accum = Prior()
    t_acc = DiffusionPriorTrainer(accum, lr=1e-2, use_ema=False, grad_accum_every=2)
    for half in x.chunk(2):
        t_acc(half).backward()
        stepped = t_acc.update()
    assert stepped and t_acc.num_steps_taken() == 1
    assert torch.allclose(full.net.weight, accum.net.weight, atol=1e-6)


def test_warmup_then_cosine_schedule():
    opt = make_optimizer(nn.Linear(2, 2), lr=1e-3)
    sched = warmup_cosine_schedule(opt, warmup_steps=4, cosine_decay_max_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[8] == pytest.approx(1e-3 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 4 / 8)).item()))


def test_weight_decay_skips_biases_and_bad_lr_is_refused():
    opt = make_optimizer(nn.Linear(3, 3), lr=1e-4, wd=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert [p.ndim for p in opt.param_groups[0]["params"]] == [2]
    with pytest.raises(ValueError, match="learning rate 0.5"):
        make_optimizer(nn.Linear(3, 3), lr=0.5)


def test_resume_from_training_state_continues_identically():
    x = torch.randn(8, 4)

    def run(steps, state=None):
        prior = Prior()
        trainer = DiffusionPriorTrainer(prior, lr=1e-2, ema_update_after_step=1, ema_update_every=1, warmup_steps=3)
        if state is not None:
            trainer.load_training_state(state)
        for _ in range(steps):
            trainer(x).backward()
            trainer.update()
        return prior, trainer

    straight, _ = run(6)
    _, first = run(3)
    state = copy.deepcopy(first.training_state())
    resumed, trainer = run(3, state)
    assert trainer.num_steps_taken() == 6
    assert torch.equal(straight.net.weight, resumed.net.weight)


def test_bf16_autocast_trains():
    prior = Prior()
    trainer = DiffusionPriorTrainer(prior, lr=1e-2, use_ema=False, precision="bf16")
    x = torch.randn(8, 4)
    first = trainer(x)
    first.backward()
    trainer.update()
    for _ in range(20):
        trainer(x).backward()
        trainer.update()
    assert trainer.last_loss.item() < first.item()
    with pytest.raises(ValueError, match="precision 'fp8'"):
        DiffusionPriorTrainer(Prior(), precision="fp8")
