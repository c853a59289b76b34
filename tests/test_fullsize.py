"""The full-size tier: every model at its real size, random weights, on the CPU (``pytest -m fullsize``).

Each model runs its real user path once (a 224-px picture captioned to 20 tokens; one denoising step at the
real resolution, SDXL at 1024x1024; Infinity-2B through all 7 scales of 0.06M), and each model we train does one
optimiser step at batch 1 at its real size with the options its GPU run uses: bf16 autocast (fp32 master
weights for what trains, bf16 for what is frozen), gradient checkpointing where the script offers it (the
SDXL LoRA). What only the real size hits (a dtype, a resolution, a memory budget) fails here first.

The networks come from ``bench/full_size.py`` (the same builders the benchmark times). The tier is excluded from
the default run (see ``pyproject.toml``) and runs as its own step in ``.ci/run``.
"""

from __future__ import annotations

import gc

import pytest
import torch
from conftest import load_script
from PIL import Image

pytestmark = [pytest.mark.fullsize, pytest.mark.timeout(1800)]  # a build + a 1024x1024 step take minutes
BF16 = torch.bfloat16


@pytest.fixture(scope="module")
def bench():
    return load_script("full_size", folder="bench")


def _autocast():
    return torch.autocast("cpu", dtype=BF16)


def _train_step(params: list[torch.nn.Parameter], loss_fn) -> float:
    """One AdamW step on ``params`` (fp32 master weights) with a bf16-autocast loss; returns the loss."""
    for p in params:
        p.data = p.data.float()
    before = [p.detach().clone() for p in params[:4]]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    with _autocast():
        loss = loss_fn()
    loss.backward()
    grads = [p.grad for p in params if p.grad is not None]
    assert grads, "no trainable parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    optimizer.step()
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params))
    return float(loss.detach())


def _free(*objects) -> None:
    del objects
    gc.collect()


# ------------------------------------------------------------------------------------------ captioners


@pytest.mark.parametrize("model_id", ["resnet18-xattn", "clipb32-xattn", "qformer-bert", "qformer-tinyllama"])
def test_captioner_captions_and_trains_at_full_size(bench, model_id):
    adapter, _ = bench.build_captioner(model_id, "cpu", BF16)
    network = adapter.network
    image = Image.new("RGB", (224, 224), (200, 30, 30))
    with _autocast():
        results = adapter.caption([image], max_new_tokens=20)
    caption = results[0].caption if hasattr(results[0], "caption") else results[0]
    assert isinstance(caption, str) and caption.strip()

    network.train()
    trainable = [p for p in network.parameters() if p.requires_grad]
    assert trainable and any(not p.requires_grad for p in network.parameters())  # frozen parts stay frozen
    with torch.no_grad(), _autocast():
        features = network.encode_images(network.preprocess([image]))
    features = {k: v.float() for k, v in features.items()} if isinstance(features, dict) else features.float()
    loss = _train_step(trainable, lambda: network(features, ["a small red circle on the left"]))
    assert loss > 0
    _free(adapter, network)


# ------------------------------------------------------------------------------------------ our diffusion models


def test_pixel_diffusion_samples_and_trains_at_full_size(bench):
    from mmdemo.models.diffusion.text import encode_text

    generator = bench.build_generator("pixel-diffusion", "cpu", BF16)
    with _autocast():
        result = generator.generate("a red circle", seed=0, preset="report", steps=1)
    image = result.image if hasattr(result, "image") else result
    assert image.size == (128, 128)  # the report's resolution

    model = generator.model
    text = encode_text(
        generator.tokenizer, model.text_encoder, ["a red circle"], model.config.text_max_length, "cpu"
    )
    denoiser = model.denoiser.train()
    noise = torch.randn(1, 3, 128, 128)
    t = torch.tensor([500])

    def loss():
        pred = denoiser(noise, t, text.hidden.detach(), text.attention_mask)
        return torch.nn.functional.mse_loss(pred.float(), noise)

    _train_step(list(denoiser.parameters()), loss)
    _free(generator, model, denoiser)


def test_latent_diffusion_samples_and_vqvae_and_unet_train_at_full_size(bench):
    from mmdemo.models.diffusion.patchgan import quantize, vq_losses

    generator = bench.build_generator("latent-diffusion", "cpu", BF16)
    with _autocast():
        result = generator.generate("a red circle", seed=0, preset="report", steps=1)
    image = result.image if hasattr(result, "image") else result
    assert image.size == (256, 256)

    model = generator.model
    config = model.config
    vqvae = model.vqvae.train()
    pixels = torch.rand(1, 3, 256, 256) * 2 - 1

    def vq_loss():
        z = vqvae.encode(pixels).latents
        z_q, _ = quantize(z.float(), vqvae.quantize.embedding.weight.float())
        codebook, commitment = vq_losses(z.float(), z_q, config.commitment_cost)
        recon = vqvae.decode(z + (z_q - z).detach()).sample  # straight-through
        return torch.nn.functional.mse_loss(recon.float(), pixels) + codebook + commitment

    _train_step(list(vqvae.parameters()), vq_loss)

    unet = model.unet.train()
    states = torch.randn(1, config.text_max_length, config.cross_attention_dim)
    noise = torch.randn(1, config.latent_channels, config.latent_size, config.latent_size)

    def unet_loss():
        pred = unet(noise, torch.tensor([500]), encoder_hidden_states=states).sample
        return torch.nn.functional.mse_loss(pred.float(), noise)

    _train_step(list(unet.parameters()), unet_loss)
    _free(generator, model, vqvae, unet)


# ------------------------------------------------------------------------------------------ Infinity-2B


def test_infinity_samples_every_scale_of_the_smallest_budget_at_full_size(bench):
    # On a CPU the full profile runs Infinity in fp32 without autocast (its loader casts the blocks to bf16
    # only on a GPU), so that is what runs here.
    generator = bench.build_generator("infinity-2b", "cpu", BF16)
    seen = []
    result = generator.generate(
        "a red circle",
        seed=0,
        pixel_budget="0.06M",
        progress=lambda done, total: seen.append((done, total)),
    )
    image = result.image if hasattr(result, "image") else result
    assert image.size == (256, 256) and seen[-1] == (7, 7)
    _free(generator)


# ------------------------------------------------------------------------------------------ SDXL + LoRA


@pytest.fixture(scope="module")
def sdxl_lora(bench):
    generator = bench.build_generator("sdxl-lora", "cpu", BF16)
    yield generator
    _free(generator)


def test_sdxl_base_and_lora_denoise_and_decode_at_1024(sdxl_lora, bench):
    from mmdemo.generators.sdxl import SDXLGenerator
    from mmdemo.registry import get_spec

    base = SDXLGenerator(get_spec("sdxl-base"), bench.stand_in_weights("sdxl-base"), sdxl_lora.shared, None)
    with _autocast():
        plain = base.generate("a red circle", seed=0, preset="report", steps=1, guidance=1.0)
        styled = sdxl_lora.generate("a red circle", seed=0, preset="report", steps=1, guidance=1.0)
    plain = plain.image if hasattr(plain, "image") else plain
    styled = styled.image if hasattr(styled, "image") else styled
    assert plain.size == styled.size == (1024, 1024)
    assert plain.tobytes() != styled.tobytes()  # the LoRA is active in one and not the other


def test_sdxl_lora_trains_one_step_at_1024_with_gradient_checkpointing(sdxl_lora):
    from mmdemo.models.sdxl.training import add_time_ids, encode_tokens, tokenize

    pipe = sdxl_lora.shared.pipe
    sdxl_lora.shared.select(sdxl_lora.adapter)
    unet = pipe.unet
    unet.enable_gradient_checkpointing()
    unet.train()
    lora = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in lora:
        p.requires_grad_(True)
    assert lora and sum(p.numel() for p in lora) > 100e6  # the rank-128 LoRA: 185.8M
    with torch.no_grad(), _autocast():
        ids = tokenize(pipe.tokenizer, ["a red circle"])
        embeds, pooled = encode_tokens(pipe.text_encoder, pipe.text_encoder_2, ids, ids)
    latents = torch.randn(1, 4, 128, 128)
    noise = torch.randn_like(latents)

    def loss():
        pred = unet(
            latents, torch.tensor([500]), encoder_hidden_states=embeds,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": add_time_ids(1024, 1024, 1)},
        ).sample  # fmt: skip
        return torch.nn.functional.mse_loss(pred.float(), noise)

    _train_step(lora, loss)
    unet.disable_gradient_checkpointing()
    unet.eval()
