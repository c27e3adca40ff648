"""One side of `diffusers_compare.py` in this process: make a network's weights, or time one network call; prints one JSON line.

    make: (diffusers' environment) build the network with diffusers from the real config, draw its weights, write them
          with diffusers' `save_pretrained` and the call's inputs (`inputs.safetensors`) into `--work/NET`
    time: (either environment) load those weights as that library loads them (`--side diffusers`: `from_pretrained`;
          `--side ours`: our converters' key maps through `convert.materialize`), warm up, time `--iters` calls

It imports torch, safetensors and only the library of its side. Memory is the resident set's high-water mark
(VmHWM, reset through /proc/self/clear_refs after warm-up) above the warmed-up resident set, which holds the weights.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import time
from pathlib import Path

import torch
from procmem import reset_peak, status_bytes
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def _nets(karlo: Path, kandinsky: Path) -> dict:
    """net: (config folder, diffusers class, scheduler config copied beside it for our prior converters)."""
    return {
        "karlo_prior": (karlo / "prior", "PriorTransformer", karlo / "prior_scheduler"),
        "karlo_decoder": (karlo / "decoder", "UNet2DConditionModel", None),
        "karlo_super_res": (karlo / "super_res_first", "UNet2DModel", None),
        "kandinsky_prior": (kandinsky / "prior" / "prior", "PriorTransformer", kandinsky / "prior" / "scheduler"),
        "kandinsky_unet": (kandinsky / "decoder" / "unet", "UNet2DConditionModel", None),
        "movq_decode": (kandinsky / "decoder" / "movq", "VQModel", None),
    }


NETS = _nets(FIXTURES / "karlo" / "configs", FIXTURES / "kandinsky" / "configs")  # the Hub's configs
# --tiny: the same networks from the tests' tiny configs (written by diffusers), to check in seconds that the comparison runs
TINY = _nets(FIXTURES / "karlo" / "tiny", FIXTURES / "kandinsky" / "tiny")
# weights and inputs in this dtype; "autocast": float32 weights and inputs under CPU/CUDA bf16 autocast
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "autocast": torch.float32}


# --- the call's inputs, one image (guided networks: its cond and uncond rows) --------------------------------------


def inputs(net: str, config: dict, g: torch.Generator, *, tiny: bool = False) -> dict[str, torch.Tensor]:
    """Fixed float32 inputs shaped by the network's config: t 500; masks of a 12-token prompt and of the empty prompt
    (the unconditional row); full size: 64 px for Karlo's decoder, 256 px for its super-resolution, 64 x 64 latents
    (512 px) for Kandinsky's U-Net and MoVQ."""
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    t2 = torch.full((2,), 500, dtype=torch.long)
    tokens = config.get("num_embeddings") or 77
    text_mask = torch.zeros(2, tokens, dtype=torch.bool)
    text_mask[0, :12], text_mask[1, :2] = True, True
    if net in ("karlo_prior", "kandinsky_prior"):
        d = config["embedding_dim"]
        return dict(x=r(2, d), t=t2, text_embed=r(2, d), text_encodings=r(2, tokens, d), text_mask=text_mask)
    size, channels = config.get("sample_size"), config.get("in_channels")
    if net == "karlo_decoder":  # text_proj's output: 4 image tokens + 77 text tokens, the added time embedding
        mask = torch.cat([torch.ones(2, 4, dtype=torch.bool), text_mask], dim=1)
        return dict(x=r(2, channels, size, size), t=t2, context=r(2, 4 + tokens, config["cross_attention_dim"]), context_mask=mask,
                    added_time_embed=r(2, 4 * config["block_out_channels"][0]))
    if net == "karlo_super_res":  # the noisy image beside the upsampled one
        return dict(x=r(1, channels, size, size), t=torch.full((1,), 500, dtype=torch.long))
    if net == "kandinsky_unet":
        return dict(x=r(2, channels, size, size), t=t2, image_embed=r(2, config["encoder_hid_dim"]))
    side = 8 if tiny else 64
    return dict(latents=r(1, config["latent_channels"], side, side))  # movq_decode


def randomize(model: torch.nn.Module, g: torch.Generator) -> None:
    """Weights N(0, 0.02); normalisation gains 1 (MoVQ's SpatialNorm gain: its conv_y bias); a prior's clip_std in [0.5, 1.5]."""
    with torch.no_grad():
        for name, module in model.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                gain = isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and pname == "weight"
                if gain or (name.endswith("conv_y") and pname == "bias"):
                    p.fill_(1.0)
                elif pname == "clip_std":
                    p.copy_(0.5 + torch.rand(p.shape, generator=g))
                else:
                    p.copy_(0.02 * torch.randn(p.shape, generator=g))


def make(args) -> dict:
    import diffusers

    config, cls_name, scheduler = (TINY if args.tiny else NETS)[args.net]
    out = args.work / args.net
    cls = getattr(diffusers, cls_name)
    model = cls.from_config(cls.load_config(config))
    g = torch.Generator().manual_seed(args.seed)
    randomize(model, g)
    model.save_pretrained(out / "model", safe_serialization=True)
    if scheduler is not None:
        shutil.copytree(scheduler, out / "scheduler", dirs_exist_ok=True)
    save_file(inputs(args.net, dict(model.config), g, tiny=args.tiny), str(out / "inputs.safetensors"))
    return dict(net=args.net, params=sum(p.numel() for p in model.parameters()), diffusers=diffusers.__version__)


# --- loading and calling, per side ------------------------------------------------------------------------------------


def _cast(tensors: dict, dtype: torch.dtype, device: str) -> dict:
    return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in tensors.items()}


def diffusers_call(net: str, folder: Path, dtype: torch.dtype, device: str, x: dict):
    """(module, call) as diffusers' pipelines call the network."""
    import diffusers

    cls = getattr(diffusers, NETS[net][1])
    m = cls.from_pretrained(folder / "model", torch_dtype=dtype).to(device).eval()
    if net.endswith("prior"):
        return m, lambda: m(x["x"], x["t"], proj_embedding=x["text_embed"], encoder_hidden_states=x["text_encodings"],
                            attention_mask=x["text_mask"], return_dict=False)[0]
    if net == "karlo_decoder":
        return m, lambda: m(x["x"], x["t"], encoder_hidden_states=x["context"], class_labels=x["added_time_embed"],
                            attention_mask=x["context_mask"], return_dict=False)[0]
    if net == "karlo_super_res":
        return m, lambda: m(x["x"], x["t"], return_dict=False)[0]
    if net == "kandinsky_unet":
        return m, lambda: m(x["x"], x["t"], encoder_hidden_states=None, added_cond_kwargs={"image_embeds": x["image_embed"]},
                            return_dict=False)[0]
    return m, lambda: m.decode(x["latents"], force_not_quantize=True, return_dict=False)[0]


def _materialized(folder: Path, build, rename, dtype, flatten=()):
    """Our module filled from diffusers' safetensors through a converter's key map (`convert.materialize`)."""
    from dalle2_core.convert.diffusers_folder import open_weights
    from dalle2_core.convert.materialize import Rule, materialize

    with open_weights(folder / "model") as weights:
        rules = [Rule(rename(k, "model"), (k,), (lambda t: t.reshape(-1)) if k in flatten else None) for k in weights.keys()]
        return materialize(build, weights, rules, dtype=dtype)


def ours_module(net: str, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The network as our converters build it from the diffusers folder (configs and key maps of the family)."""
    from dalle2_core.convert import diffusers_config as dc, diffusers_keys as dk

    config = json.loads((folder / "model" / "config.json").read_text())
    if net.endswith("prior"):
        from dalle2_core.families.kandinsky.config import prior_config
        from dalle2_core.families.karlo.config import karlo_prior_config
        from dalle2_core.prior import StandardizedPrior

        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        c = (karlo_prior_config if net == "karlo_prior" else prior_config)(config, scheduler)
        return _materialized(folder, lambda: StandardizedPrior(config=c), dk.prior_key, dtype, dk.PRIOR_FLATTENED).net
    from dalle2_core.adm import AdmUnet

    if net == "karlo_decoder":
        return _materialized(folder, lambda: AdmUnet(dc.unet2d_condition_config(config)), dk.unet_key, dtype)
    if net == "karlo_super_res":
        return _materialized(folder, lambda: AdmUnet(dc.unet2d_config(config)), dk.unet_key, dtype)
    from dalle2_core.families.kandinsky import config as kc, keys

    if net == "kandinsky_unet":
        return _materialized(folder, lambda: AdmUnet(kc.unet_config(config)), keys.unet_key, dtype)
    from dalle2_core.movq import MoVQ

    return _materialized(folder, lambda: MoVQ(kc.movq_config(config)), keys.movq_key, dtype)


def ours_call(net: str, folder: Path, dtype: torch.dtype, device: str, x: dict, path: str):
    """(module, call, once-per-run seconds) as our samplers call the network: a U-Net's context keys and values are
    projected once per sampling run (`encode_context`, timed apart). `path`: eager, channels_last, compile, compile_cl."""
    m = ours_module(net, folder, dtype).to(device).eval()
    start = time.perf_counter()
    if net.endswith("prior"):
        kw = dict(text_embed=x["text_embed"], text_encodings=x["text_encodings"], text_mask=x["text_mask"])
    elif net == "karlo_decoder":
        with torch.no_grad():
            kw = m.encode_context(context=x["context"], context_mask=x["context_mask"], added_time_embed=x["added_time_embed"])
    elif net == "kandinsky_unet":
        with torch.no_grad():
            kw = m.encode_context(image_embed=x["image_embed"])
    else:
        kw = {}
    once = time.perf_counter() - start
    if path in ("channels_last", "compile_cl"):
        m = m.to(memory_format=torch.channels_last)
        x = {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v for k, v in x.items()}
    if path.startswith("compile"):
        from dalle2_core.nn import compile_for_inference

        compile_for_inference(m)
    if net == "movq_decode":
        return m, lambda: m.decode(x["latents"]), once
    return m, lambda: m(x["x"], x["t"], **kw), once


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    dtype, device, folder = DTYPES[args.dtype], args.device, args.work / args.net
    x = _cast(load_file(str(folder / "inputs.safetensors")), dtype, device)
    cuda = device.startswith("cuda")
    start = time.perf_counter()
    if args.side == "diffusers":
        module, call, once = *diffusers_call(args.net, folder, dtype, device, x), 0.0
    else:
        module, call, once = ours_call(args.net, folder, dtype, device, x, args.path)
    load_s = time.perf_counter() - start
    weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    autocast = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=args.dtype == "autocast")
    with torch.no_grad(), autocast:
        warm = []
        for _ in range(args.warmup):
            _sync(device)
            t0 = time.perf_counter()
            out = call()
            _sync(device)
            warm.append(time.perf_counter() - t0)
        if args.save_output:
            save_file({"out": out.float().contiguous().cpu()}, str(args.save_output))
        del out
        gc.collect()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = reset_peak()
        times = []
        for _ in range(args.iters):
            _sync(device)
            t0 = time.perf_counter()
            call()
            _sync(device)
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else status_bytes("VmHWM")
    return dict(side=args.side, path=args.path if args.side == "ours" else "", net=args.net, dtype=args.dtype, seconds=times,
                seconds_per_call=statistics.median(times), warmup_seconds=warm, once_per_run_seconds=once, load_seconds=load_s,
                weights_bytes=weights, baseline_bytes=base, peak_above_baseline=max(0, peak - base),
                process_peak_bytes=None if cuda else peak, torch=torch.__version__)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["make", "time"])
    p.add_argument("--net", required=True, choices=list(NETS))
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="make: the tests' tiny configs instead of the full-size ones")
    p.add_argument("--side", choices=["ours", "diffusers"], default="ours")
    p.add_argument("--path", default="eager", choices=["eager", "channels_last", "compile", "compile_cl"], help="ours: the path")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--iters", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save-output", type=Path, default=None, help="write the warm-up call's output (float32) here")
    args = p.parse_args(argv)
    if min(args.iters, args.warmup) < 1:
        p.error(f"--iters and --warmup must be >= 1, got {args.iters}, {args.warmup}")
    print(json.dumps(make(args) if args.action == "make" else measure(args)), flush=True)


if __name__ == "__main__":
    main()
