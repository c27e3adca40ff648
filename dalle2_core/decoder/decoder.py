"""The cascaded decoder of unCLIP (Ramesh et al. 2022, Sec. 2.1): CLIP image embedding -> image.

A base unet generates the lowest resolution from the image embedding (and optionally the text);
each following unet is a super-resolution diffusion conditioned on the previous stage's output
(cascaded diffusion, Ho et al. 2021). Any stage may run in the latent space of a frozen VQ-GAN
(Rombach et al. 2022). The diffusion math is `dalle2_core.diffusion`; this module only wires the
networks, conditioning and stages together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from dalle2_core.cascade import Picture, Stage, sample_cascade, stage_settings
from dalle2_core.conditioning import Condition
from dalle2_core.decoder.decoder_build import frozen_clip, networks_and_config
from dalle2_core.decoder.decoder_config import DecoderConfig
from dalle2_core.decoder.decoder_lowres import LowresConditioner, crop, random_crop_params, resize_image_to
from dalle2_core.decoder.unet import Unet
from dalle2_core.diffusion import GaussianDiffusion, dynamic_thresholding, static_clamp
from dalle2_core.helpers import default, eval_mode, exists, normalize_neg_one_to_one, unnormalize_zero_to_one
from dalle2_core.vqgan.vae import NullVQGanVAE, VQGanVAE


class Decoder(nn.Module):
    """Cascade of diffusion unets from a CLIP image embedding to an image (unCLIP decoder, Sec. 2.1)."""

    def __init__(self, unet: Unet | tuple[Unet, ...] | None = None, *, clip=None, vae=(), config=None, **kwargs):
        super().__init__()
        unets, vaes, cfg = networks_and_config(unet, vae, config, kwargs)
        self.clip, cfg = frozen_clip(clip, cfg)  # a ClipAdapter (a raw CLIP is wrapped), or None
        cfg.validate()
        for i, v in enumerate(vaes):
            if exists(v) and v.channels != cfg.channels:
                raise ValueError(f"VQ-GAN of unet {i + 1} takes {v.channels} channels, the decoder {cfg.channels}")
        self.vaes = nn.ModuleList([v if exists(v) else NullVQGanVAE(cfg.channels) for v in vaes])
        self.vaes.eval().requires_grad_(False)  # frozen: trained beforehand, never by the decoder loss

        self.unets = nn.ModuleList(self._adapted_unets(unets, cfg))
        # the stored flag says whether sampling needs text (and rebuilds the same unets)
        on_text = any(u.cond_on_text_encodings for u in self.unets)
        self.config = cfg = DecoderConfig.build(cfg, unets=tuple(u.config for u in self.unets), condition_on_text_encodings=on_text)

        d, lowres = cfg.diffusion, cfg.lowres
        self.diffusions = [
            GaussianDiffusion.from_schedule(default(s, "cosine"), d.timesteps, objective=o, learned_variance=lv)
            for s, o, lv in zip(cfg.option_per_unet("diffusion", "beta_schedule"), cfg.objectives(), self.learned_variance)
        ]
        use_blur, use_noise = cfg.option_per_unet("lowres", "use_blur_for_lowres_cond"), self._noised_lowres(cfg)
        self.lowres_conds = [None] + [
            LowresConditioner(
                downsample_first=lowres.lowres_downsample_first,
                use_blur=bool(use_blur[i]),
                blur_prob=lowres.blur_prob,
                blur_sigma=lowres.blur_sigma,
                blur_kernel_size=lowres.blur_kernel_size,
                use_noise=use_noise[i],
                noise_sample_level=lowres.lowres_noise_sample_level,
            )
            for i in range(1, len(self.unets))
        ]
        # tracks where `.to()` put the decoder, so `one_unet_in_gpu` knows the accelerator
        self.register_buffer("_device_tracker", torch.zeros(()), persistent=False)

    @staticmethod
    def _noised_lowres(cfg: DecoderConfig) -> tuple[bool, ...]:
        return tuple(bool(v) for v in cfg.option_per_unet("lowres", "use_noise_for_lowres_cond"))

    def _adapted_unets(self, unets: tuple[Unet, ...], cfg: DecoderConfig) -> list[Unet]:
        """Each unet adapted to its place in the cascade (the same unet when nothing changes)."""
        # text conditioning: as each unet declares it; the decoder flag alone conditions the base unet
        declared = [u.cond_on_text_encodings for u in unets]
        if cfg.conditioning.condition_on_text_encodings and not any(declared):
            declared[0] = True
        text_cond = [not cfg.conditioning.unconditional and on for on in declared]
        return [
            u.with_options(**self._stage_options(i, u, vae, cfg, text_cond[i]))
            for i, (u, vae) in enumerate(zip(unets, self.vaes))
        ]

    def _stage_options(self, i: int, unet: Unet, vae: nn.Module, cfg: DecoderConfig, text_cond: bool) -> dict:
        """The config options unet `i` needs in this cascade: low-res input, conditions, channels."""
        learned_variance = cfg.learned_variance_per_unet()[i]
        options = dict(
            lowres_cond=i > 0,
            lowres_noise_cond=i > 0 and self._noised_lowres(cfg)[i],
            # the paper's upsamplers see only the low-res image (as DALLE2-pytorch does)
            cond_on_image_embeds=not cfg.conditioning.unconditional and i == 0,
            cond_on_text_encodings=text_cond,
            channels=vae.encoded_dim,
            channels_out=vae.encoded_dim * (2 if learned_variance else 1),
            learned_variance=learned_variance,
        )
        adapter = self.clip
        for on, name, known in (
            (options["cond_on_image_embeds"], "image_embed_dim", adapter.dim_latent if exists(adapter) else cfg.image_embed_dim),
            (text_cond, "text_embed_dim", adapter.dim_text if exists(adapter) else cfg.text_embed_dim),
        ):
            own = getattr(unet.config.conditioning, name)
            if on and exists(own) and exists(known) and own != known:
                raise ValueError(f"unet {i + 1} has {name}={own}, but the decoder's embeddings are {known} wide")
            if on and exists(default(own, known)):
                options[name] = default(own, known)
        return options

    def train(self, mode: bool = True) -> Decoder:
        """Train mode for the unets only: the CLIP and the VQ-GANs stay frozen in eval mode."""
        super().train(mode)
        self.vaes.eval()
        if exists(self.clip):
            self.clip.eval()
        return self

    @classmethod
    def from_config(cls, config: DecoderConfig | dict, clip=None) -> Decoder:
        """Rebuild (untrained) from a saved config; load the weights with `load_state_dict`."""
        config = config if isinstance(config, DecoderConfig) else DecoderConfig.from_dict(config)
        return cls(config=config, clip=clip)

    # ---- introspection ---------------------------------------------------------------------

    @property
    def num_unets(self) -> int:
        return len(self.unets)

    @property
    def image_sizes(self) -> tuple[int, ...]:
        return self.config.image_sizes

    @property
    def image_size(self) -> int:
        return self.config.image_sizes[-1]

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def unconditional(self) -> bool:
        return self.config.conditioning.unconditional

    @property
    def condition_on_text_encodings(self) -> bool:
        return any(u.cond_on_text_encodings for u in self.unets)

    @property
    def learned_variance(self) -> tuple[bool, ...]:
        return self.config.learned_variance_per_unet()

    def get_unet(self, unet_number: int) -> Unet:
        return self.unets[self._unet_index(unet_number)]

    def _unet_index(self, unet_number) -> int:
        if isinstance(unet_number, bool) or not isinstance(unet_number, int) or not 1 <= unet_number <= self.num_unets:
            raise ValueError(f"unet_number {unet_number!r} is invalid; accepted: 1..{self.num_unets}")
        return unet_number - 1

    def _stage_size(self, index: int) -> int:
        """Height/width of what unet `index` denoises (latent stages are 2**layers smaller)."""
        return self.vaes[index].get_encoded_fmap_size(self.image_sizes[index])

    # ---- devices ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def one_unet_in_gpu(self, unet_number: int | None = None, unet: Unet | None = None) -> Iterator[None]:
        """Keep only one unet on the decoder's accelerator, the others on CPU, for the block's duration."""
        if exists(unet_number) == exists(unet):
            raise ValueError("give exactly one of unet_number and unet")
        target = self.get_unet(unet_number) if exists(unet_number) else unet
        if not any(target is u for u in self.unets):
            raise ValueError("unet is not one of this decoder's unets")
        device = self._device_tracker.device
        if device.type == "cpu":
            yield
            return
        cpu = torch.device("cpu")
        before = [next(u.parameters()).device for u in self.unets]
        for u in self.unets:
            u.to(device if u is target else cpu)
        try:
            yield
        finally:
            for u, d in zip(self.unets, before):
                u.to(d)

    # ---- conditioning ----------------------------------------------------------------------

    def _embed(self, images, text, image_embed, text_encodings, text_mask):
        """CLIP image embedding and text encodings from whatever the caller passed."""
        if self.unconditional:
            return None, None, None
        if not exists(image_embed):
            if not exists(images):
                raise ValueError("pass image_embed (or images with a clip on the decoder)")
            if not exists(self.clip):
                raise ValueError("no image_embed given and the decoder has no clip to compute it")
            with torch.no_grad():
                image_embed = self.clip.embed_image(images).image_embed
        if image_embed.ndim != 2:
            raise ValueError(f"image_embed must have shape (batch, dim), got {tuple(image_embed.shape)}")
        if exists(text) and not exists(text_encodings):
            if not exists(self.clip):
                raise ValueError("raw text needs a clip on the decoder; pass text_encodings instead")
            with torch.no_grad():
                embedded = self.clip.embed_text(text)
                text_encodings, text_mask = embedded.text_encodings, embedded.text_mask
        if self.condition_on_text_encodings and not exists(text_encodings):
            raise ValueError("this decoder is conditioned on text: pass text or text_encodings")
        if not self.condition_on_text_encodings and exists(text_encodings):
            raise ValueError("this decoder is not conditioned on text (condition_on_text_encodings=False), yet text was given")
        return image_embed, text_encodings, text_mask

    def _network(self, index: int):
        """Unet `index` as the network the diffusion calls, with the variance fraction squashed if asked."""
        unet = self.unets[index]
        if not (self.learned_variance[index] and self.config.diffusion.learned_variance_constrain_frac):
            return unet

        def constrained(x, t, **kwargs):
            pred, var_values = unet(x, t, **kwargs).chunk(2, dim=1)
            # the diffusion reads frac = (v + 1) / 2; make that sigmoid((v + 1) / 2), always in (0, 1)
            frac = torch.sigmoid(unnormalize_zero_to_one(var_values))
            return torch.cat((pred, normalize_neg_one_to_one(frac)), dim=1)

        return constrained

    def _unet_cond(self, index, image_embed, text_encodings, text_mask, lowres_img, lowres_level) -> dict:
        """The keyword conditions unet `index` takes (only those it was built for)."""
        u = self.unets[index]
        cond = {}
        if u.cond_on_image_embeds:
            cond["image_embed"] = image_embed
        if u.cond_on_text_encodings:
            cond["text_encodings"] = text_encodings
            if exists(text_mask):
                cond["text_mask"] = text_mask
        if u.lowres_cond:
            cond["lowres_cond_img"] = lowres_img
        if u.lowres_noise_cond:
            cond["lowres_noise_level"] = lowres_level
        return cond

    def _encode(self, index: int, img: torch.Tensor) -> torch.Tensor:
        """[0, 1] image -> what unet `index` diffuses: [-1, 1] pixels or the frozen VQ-GAN's latent."""
        with torch.no_grad():
            return self.vaes[index].encode(normalize_neg_one_to_one(img))

    # ---- training --------------------------------------------------------------------------

    def forward(
        self,
        images: torch.Tensor,
        text=None,
        image_embed: torch.Tensor | None = None,
        text_encodings: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        unet_number: int | None = None,
        return_lowres_cond_image: bool = False,
    ):
        """Diffusion loss of one unet on images in [0, 1] (b, c, h, w); other unets are untouched."""
        if self.num_unets > 1 and not exists(unet_number):
            raise ValueError(f"this decoder has {self.num_unets} unets: pass unet_number (1..{self.num_unets}) to train one")
        index = self._unet_index(default(unet_number, 1))
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"images must have shape (b, {self.channels}, h, w), got {tuple(images.shape)}")
        size = self.image_sizes[index]
        if min(images.shape[-2:]) < size:
            raise ValueError(f"unet {index + 1} trains at {size}px; images are {tuple(images.shape[-2:])}")
        image_embed, text_encodings, text_mask = self._embed(images, text, image_embed, text_encodings, text_mask)

        lowres = self.lowres_conds[index]
        lowres_img = lowres_level = None
        if exists(lowres):
            lowres_img, lowres_level = lowres.for_training(images, target_size=size, lowres_size=self.image_sizes[index - 1])
        target = resize_image_to(images, size)
        crop_size = self.config.option_per_unet("lowres", "random_crop_sizes")[index]
        if exists(crop_size):
            # the same window for the target and its condition (a super-resolution unet is convolutional)
            top, left = random_crop_params(target, crop_size)
            target, lowres_img = crop(target, top, left, crop_size), crop(lowres_img, top, left, crop_size)

        x_start = self._encode(index, target)
        lowres_x = self._encode(index, lowres_img) if exists(lowres_img) else None

        diffusion, b = self.diffusions[index], x_start.shape[0]
        c = self.config.conditioning
        cond = self._unet_cond(index, image_embed, text_encodings, text_mask, lowres_x, lowres_level)
        device = x_start.device
        # classifier-free guidance training (Ho & Salimans 2022): drop each condition at random
        cond["image_cond_drop_mask"] = torch.rand(b, device=device) < c.image_cond_drop_prob
        cond["text_cond_drop_mask"] = torch.rand(b, device=device) < c.text_cond_drop_prob

        d = self.config.diffusion
        t = diffusion.sample_timesteps(b, device=device)
        losses = diffusion.training_losses(
            self._network(index),
            x_start,
            t,
            model_kwargs=cond,
            loss_type=d.loss_type,
            p2_gamma=float(self.config.option_per_unet("diffusion", "p2_loss_weight_gamma")[index]),
            p2_k=d.p2_loss_weight_k,
            vb_weight=d.vb_loss_weight,
        )
        loss = losses.mean()
        return (loss, lowres_img) if return_lowres_cond_image else loss

    # ---- sampling --------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        image_embed: torch.Tensor | None = None,
        text=None,
        text_encodings: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        *,
        batch_size: int = 1,
        cond_scale: float | tuple[float, ...] = 1.0,
        sampler: str = "ddpm",
        steps: int | str | tuple | None = None,
        start_at_unet_number: int = 1,
        stop_at_unet_number: int | None = None,
        start_image_or_video: torch.Tensor | None = None,
        init_image: torch.Tensor | None = None,
        strength: float = 1.0,
        inpaint_image: torch.Tensor | None = None,
        inpaint_mask: torch.Tensor | None = None,
        inpaint_resample_times: int = 5,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        on_step=None,
        uncond: Condition | None = None,
        spacing: str | None = None,
    ) -> torch.Tensor:
        """Run the cascade from `start_at_unet_number` to `stop_at_unet_number`; images in [0, 1].

        `cond_scale`, `steps` (respaced sampling steps, default `sample_timesteps`) may be given
        per unet. Only the conditions the running stages use are needed (an upsampler alone needs
        no image embedding). `init_image` with `strength` < 1 is SDEdit (Meng et al. 2022): every
        stage starts from the image noised to the level at `strength` of its schedule instead of
        from pure noise (0 returns the image itself). Inpainting (RePaint) keeps `inpaint_image`
        where `inpaint_mask` (b, h, w) is True. `on_step(unet_number, i, total, x)` is called after
        every denoising step. `generator` may be a list with one generator per image: each image's
        noise is then the same as when sampled alone. `uncond` (a negative prompt's image embedding and
        text, Kandinsky-style) replaces the learned null conditions in the unconditional branch of guidance. `spacing`
        picks which timesteps the steps visit (`diffusion.spacing`; default "uniform").
        """
        start = self._unet_index(start_at_unet_number)
        stop = self._unet_index(default(stop_at_unet_number, self.num_unets))
        if stop < start:
            raise ValueError(f"stop_at_unet_number {stop + 1} is before start_at_unet_number {start + 1}")
        image_embed, text_encodings, text_mask, batch_size = self._sample_conditions(
            range(start, stop + 1), image_embed, text, text_encodings, text_mask, batch_size)
        picture = Picture.of(init_image, strength, inpaint_image, inpaint_mask, inpaint_resample_times)
        previous = self._start_images(start, start_image_or_video, batch_size)
        settings = stage_settings(self.num_unets, cond_scale=cond_scale, sampler=sampler, eta=self.config.diffusion.ddim_sampling_eta,
                                  steps=default(steps, self.config.diffusion.sample_timesteps), spacing=spacing)
        hook = (lambda position, i, total, x: on_step(start + position + 1, i, total, x)) if exists(on_step) else None
        with eval_mode(self):
            stages = self.stages(image_embed, text_encodings, text_mask, uncond=uncond, start=start, stop=stop)
            return sample_cascade(stages, settings[start : stop + 1], batch_size=batch_size, generator=generator, on_step=hook,
                                  picture=picture, start=previous)

    def stages(self, image_embed=None, text_encodings=None, text_mask=None, *, uncond: Condition | None = None, start: int = 0,
               stop: int | None = None) -> list[Stage]:
        """The cascade's stages `start` .. `stop` (0-based indices) for `sample_cascade`, with these conditions."""
        return [self._stage(i, image_embed, text_encodings, text_mask, uncond) for i in range(start, default(stop, self.num_unets - 1) + 1)]

    def _start_images(self, start: int, images: torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
        """What the first running stage upsamples ([-1, 1]): None for the base unet, else the previous stage's images."""
        if start == 0:
            return None
        if not exists(images):
            raise ValueError(f"start_at_unet_number={start + 1} needs start_image_or_video (the stage {start} images)")
        if images.shape[0] != batch_size:
            raise ValueError(f"start_image_or_video has batch {images.shape[0]}, expected {batch_size}")
        return normalize_neg_one_to_one(resize_image_to(images, self.image_sizes[start - 1]))

    def _sample_conditions(self, stages, image_embed, text, text_encodings, text_mask, batch_size):
        """(image_embed, text_encodings, text_mask, batch) for the stages that will run; None where none uses it."""
        if self.unconditional:
            return None, None, None, batch_size
        running = [self.unets[i] for i in stages]
        if any(u.cond_on_image_embeds for u in running) or exists(image_embed):
            image_embed, text_encodings, text_mask = self._embed(None, text, image_embed, text_encodings, text_mask)
            return image_embed, text_encodings, text_mask, image_embed.shape[0]
        if any(u.cond_on_text_encodings for u in running):
            if exists(text) and not exists(text_encodings):
                if not exists(self.clip):
                    raise ValueError("raw text needs a clip on the decoder; pass text_encodings instead")
                embedded = self.clip.embed_text(text)
                text_encodings, text_mask = embedded.text_encodings, embedded.text_mask
            if not exists(text_encodings):
                raise ValueError("these stages are conditioned on text: pass text or text_encodings")
            batch_size = text_encodings.shape[0]
        return None, text_encodings, text_mask, batch_size

    def _stage(self, index, image_embed, text_encodings, text_mask, uncond: Condition | None) -> Stage:
        """Unet `index` as a cascade stage: its network, conditions, diffusion, VQ-GAN and low-resolution input."""
        unet, vae, diffusion = self.unets[index], self.vaes[index], self.diffusions[index]
        param = next(unet.parameters())
        cond = self._unet_cond(index, image_embed, text_encodings, text_mask, None, None)
        # a stage without image/text condition has nothing to guide; guiding every output channel,
        # the variance fraction included, is what the trained (LAION) checkpoints expect
        conditioned = unet.cond_on_image_embeds or unet.cond_on_text_encodings
        negative = None
        if exists(uncond) and conditioned:
            text = uncond.text
            encodings, mask = (text.text_encodings, text.text_mask) if exists(text) else (None, None)
            negative = self._unet_cond(index, uncond.image_embed, encodings, mask, None, None)
        c = self.config.conditioning
        denoise_fn = None
        if c.clip_denoised and not isinstance(vae, VQGanVAE):  # latents have no [-1, 1] range to clamp to
            denoise_fn = dynamic_thresholding(c.dynamic_thresholding_percentile) if c.dynamic_thresholding else static_clamp
        lowres = None
        if exists(self.lowres_conds[index]):
            lowres = lambda previous, generator: self._lowres_input(index, previous, generator)  # noqa: E731
        return Stage(
            name=f"unet {index + 1}", network=self._network(index), diffusion=diffusion, size=self.image_sizes[index],
            channels=vae.encoded_dim, latent_size=self._stage_size(index), dtype=param.dtype, device=param.device,
            codec=vae if isinstance(vae, VQGanVAE) else None, cond=cond, uncond=negative, guided=conditioned,
            guide_variance=True, lowres=lowres, denoise_fn=denoise_fn, max_batch=unet.sampling_max_batch,
            default_steps=self.config.option_per_unet("diffusion", "sample_timesteps")[index], resize=resize_image_to,
        )

    def _lowres_input(self, index: int, previous: torch.Tensor, generator) -> dict:
        """The previous stage's [-1, 1] image as unet `index`'s low-resolution conditions (noised at the sampling level)."""
        u = self.unets[index]
        lowres_img, lowres_level = self.lowres_conds[index].for_sampling(
            unnormalize_zero_to_one(previous), target_size=self.image_sizes[index], generator=generator)
        cond = {"lowres_cond_img": self._encode(index, lowres_img)}
        if u.lowres_noise_cond:
            cond["lowres_noise_level"] = lowres_level
        return cond


__all__ = ["Decoder"]
