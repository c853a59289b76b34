"""The ``report`` recipes are the report's settings, and its VQ-VAE and latent UNet are its networks.

The tables below are written from the report and its authors' code (image2text ``main.py``; text2image
``train_my_diffusion.py``; the latent diffusion ``train_vqvae.py`` / ``train_ddpm_cond.py`` with
``flickr8k.yaml`` / ``flickr8k_text_cond.yaml`` and ``models/{vqvae,unet_cond_base,blocks}.py``; the SDXL
``finetune_diffusion.sh`` on diffusers' ``train_text_to_image_lora_sdxl.py``), not from our code, so a change
of a recipe that strays from the report fails here.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from _diffusion_helpers import load_script

from mmdemo import recipes
from mmdemo.params import count_parameters
from mmdemo.registry import get_spec

REPORT_PIXEL = dict(
    max_images=7000, captions="first",  # the LoRA folder: first 7000 images, first caption
    sampling="epochs", epochs=5, max_train_steps=None, train_batch_size=32,
    optimizer="adamw", learning_rate=1e-4, weight_decay=0.01,  # torch AdamW's default decay
    lr_schedule="cosine", lr_warmup_steps=500, max_grad_norm=1.0, mixed_precision="fp16",
    cond_dropout=0.0, use_ema=False, ema_decay=0.999,  # no condition dropout, no EMA
    resize="squash", hflip=True,  # Resize((128, 128)) + RandomHorizontalFlip
    cross_attention_mask=False,  # the UNet sees the padded prompt unmasked
)  # fmt: skip
REPORT_LATENT = dict(
    max_images=None, captions="random", sampling="epochs", epochs=100, max_train_steps=None, train_batch_size=16,
    optimizer="adam", learning_rate=5e-6, weight_decay=0.0, lr_schedule="constant", lr_warmup_steps=0,
    max_grad_norm=0.0, mixed_precision="no", cond_dropout=0.1, use_ema=False, ema_decay=0.999,
    resize="crop", hflip=False, latents="quantized", scale_latents=False,
)  # fmt: skip
REPORT_VQVAE = dict(
    max_images=None, resize="crop", hflip=False, sampling="epochs", train_batch_size=8,
    gradient_accumulation_steps=4, epochs=60, max_train_steps=None, learning_rate=1e-5, adam_beta1=0.5,
    adam_beta2=0.999, max_grad_norm=0.0, mixed_precision="no", lpips_weight=1.0, disc_loss="lsgan",
    discriminator="report", disc_start=15000 // 4, disc_weight=0.5,  # 15 000 micro-batches of 8 = 3750 updates
)  # fmt: skip
REPORT_CAPTIONER = dict(
    epochs=50, batch_size=24, lr=1e-4, weight_decay=1e-4, lr_step_epochs=30, lr_gamma=0.1, seed=2024,
    captions_per_image=1, mixed_precision="no", image_dropout=0.2, resize="squash",  # Resize((224, 224))
    prompt_format="report", max_caption_tokens=50,  # TinyLlama: "<s>" + prompt padded to 9 tokens; max_length 50
)  # fmt: skip
REPORT_SDXL_LORA = dict(lora_dtype="weight", vae_dtype="fp32")


@pytest.mark.parametrize(
    "table, expected",
    [
        (recipes.PIXEL_DIFFUSION, REPORT_PIXEL),
        (recipes.LATENT_DIFFUSION, REPORT_LATENT),
        (recipes.VQVAE, REPORT_VQVAE),
        (recipes.CAPTIONER, REPORT_CAPTIONER),
        (recipes.SDXL_LORA, REPORT_SDXL_LORA),
    ],
)
def test_report_recipes_are_the_reports_settings(table, expected):
    assert asdict(table["report"]) == expected
    assert table["ours"] != table["report"]  # ours is a separate, named recipe


def test_report_lengths_on_flickr8k():
    assert recipes.steps_for_epochs(5, 7000, 32) == 1095  # pixel: 5 epochs of ceil(7000 / 32) = 219
    assert recipes.steps_for_epochs(100, 8091, 16) == 50600  # latent: 100 epochs of 506
    assert recipes.steps_for_epochs(60, 8091, 8, accumulation=4) == 15180  # VQ-VAE: 60 x 1012 / 4


def _resolved(script_name: str, argv: list[str]):
    return load_script(script_name).parse_args(argv)


@pytest.fixture
def folders(tmp_path):
    (tmp_path / "captions.txt").write_text("image,caption\n")
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")
    vqvae = tmp_path / "vqvae"
    vqvae.mkdir()
    (vqvae / "vqvae.safetensors").write_bytes(b"")
    return tmp_path, encoder, vqvae


def test_scripts_resolve_the_report_recipe_by_default_and_options_win(folders):
    data, encoder, vqvae = folders
    common = ["--data", str(data), "--output-dir", str(data / "out")]
    pixel = _resolved("train_pixel_diffusion", [*common, "--text-encoder", str(encoder)])
    assert pixel.recipe == "report" and {k: getattr(pixel, k) for k in REPORT_PIXEL} == REPORT_PIXEL
    assert pixel.guidance == 1.0  # no condition dropout: sample grids without guidance
    latent = _resolved("train_latent_diffusion", [*common, "--text-encoder", str(encoder), "--vqvae", str(vqvae)])
    assert {k: getattr(latent, k) for k in REPORT_LATENT} == REPORT_LATENT
    vq = _resolved("train_vqvae", common)
    assert {k: getattr(vq, k) for k in REPORT_VQVAE} == REPORT_VQVAE
    captioner = _resolved("train_captioner", ["--model", "resnet18-xattn", "--data", str(data), "--out", str(data)])
    assert {k: getattr(captioner, k) for k in REPORT_CAPTIONER} == REPORT_CAPTIONER
    lora = _resolved("train_sdxl_lora", ["--data", str(data)])
    assert {k: getattr(lora, k) for k in REPORT_SDXL_LORA} == REPORT_SDXL_LORA
    # An option on the command line wins over the recipe; --recipe ours fills in ours.
    tweaked = _resolved("train_latent_diffusion", [*common, "--text-encoder", str(encoder), "--vqvae", str(vqvae),
                                                   "--learning-rate", "3e-5", "--no-scale-latents", "--recipe", "ours"])  # fmt: skip
    assert tweaked.learning_rate == 3e-5 and tweaked.scale_latents is False
    assert tweaked.optimizer == "adamw" and tweaked.latents == "continuous" and tweaked.cond_dropout == 0.1


def test_epoch_sampling_sees_every_row_once_per_epoch_and_resumes():
    from mmdemo.models.diffusion.training import batch_rows

    def rows(step):
        return batch_rows(10, 4, step, sampling="epochs", seed=3, process_index=0, generator=None).tolist()

    epoch0 = [rows(s) for s in range(3)]
    assert [len(r) for r in epoch0] == [4, 4, 2]  # the short last batch of a DataLoader
    assert sorted(sum(epoch0, [])) == list(range(10))
    assert sorted(sum((rows(s) for s in range(3, 6)), [])) == list(range(10))
    assert rows(4) == rows(4) and rows(1) != rows(4)  # a function of the step only: resumes exactly


# --------------------------------------------------------------------------------------- the report's networks


def _latent_model():
    from mmdemo.generators.latent_diffusion import LatentDiffusionGenerator

    return LatentDiffusionGenerator.build_network(get_spec("latent-diffusion").full_config, device="meta")


def _attentions(module: torch.nn.Module) -> list[torch.nn.MultiheadAttention]:
    return [m for m in module.modules() if isinstance(m, torch.nn.MultiheadAttention)]


def test_report_vqvae_parameters_and_layout():
    vq = _latent_model().vqvae
    total, _ = count_parameters(vq)
    assert abs(total - 22.0e6) / 22.0e6 < 0.01, total
    # Four 4-head self-attentions (two per mid block, encoder and decoder), 256 wide; none in the stages.
    attentions = _attentions(vq)
    assert len(attentions) == 4 and {(a.num_heads, a.embed_dim) for a in attentions} == {(4, 256)}
    assert len(_attentions(vq.down)) == 0 and len(_attentions(vq.up)) == 0
    assert [len(m.resnets) for m in (vq.encoder_mid, vq.decoder_mid)] == [3, 3]
    # Three down stages 64 -> 128 -> 256 -> 256, two residual layers each, 4x4 stride-2 downsampling.
    assert [(s.layers[0].resnet.in_channels, s.layers[-1].resnet.out_channels) for s in vq.down] == [
        (64, 128), (128, 256), (256, 256)
    ]  # fmt: skip
    assert all(len(s.layers) == 2 for s in [*vq.down, *vq.up])
    convs = [s.downsample.conv for s in vq.down]
    assert all((c.kernel_size, c.stride, c.padding) == ((4, 4), (2, 2), (1, 1)) for c in convs)
    # The decoder mirrors it with 4x4 stride-2 transposed convolutions and no skip connections.
    ups = [s.upsample.conv for s in vq.up]
    assert all(isinstance(c, torch.nn.ConvTranspose2d) and c.kernel_size == (4, 4) for c in ups)
    assert [(s.layers[0].resnet.in_channels, s.layers[-1].resnet.out_channels) for s in vq.up] == [
        (256, 256), (256, 128), (128, 64)
    ]  # fmt: skip
    assert vq.quantize.embedding.weight.shape == (8192, 4)
    assert vq.quant_conv.kernel_size == (1, 1) and vq.post_quant_conv.kernel_size == (1, 1)
    # Every residual block has a 1x1 shortcut conv, as the report's do, even where the width is unchanged.
    assert vq.encoder_mid.resnets[1].conv_shortcut.kernel_size == (1, 1)


def test_report_latent_unet_parameters_and_layout():
    unet = _latent_model().unet
    total, _ = count_parameters(unet)
    assert abs(total - 118.5e6) / 118.5e6 < 0.01, total
    # Down 256 -> 384 -> 512 -> 768, mid 768 -> 512, up back to 128 before the output conv.
    assert [(s.layers[0].resnet.in_channels, s.layers[-1].resnet.out_channels) for s in unet.down] == [
        (256, 384), (384, 512), (512, 768)
    ]  # fmt: skip
    assert (unet.mid.resnets[0].in_channels, unet.mid.resnets[-1].out_channels) == (768, 512)
    assert [(s.layers[0].resnet.in_channels, s.layers[-1].resnet.out_channels) for s in unet.up] == [
        (1024, 384), (768, 256), (512, 128)
    ]  # fmt: skip
    assert unet.out[2].in_channels == 128 and unet.out[2].out_channels == 4
    # Self- and cross-attention in every layer of every stage (2 x 3 down, 2 mid, 2 x 3 up), 16 heads each.
    layers = [layer for stage in [*unet.down, *unet.up] for layer in stage.layers]
    assert len(layers) == 12
    assert all(layer.self_attention is not None and layer.cross_attention is not None for layer in layers)
    assert len(unet.mid.attentions) == len(unet.mid.cross_attentions) == 2
    attentions = _attentions(unet)
    assert len(attentions) == 28 and {a.num_heads for a in attentions} == {16}
    # Cross-attention: the 512-wide CLIP states projected to the layer's width by their own Linear.
    assert {layer.cross_attention.context_proj.in_features for layer in layers} == {512}
    # Time embedding: 512 sinusoidal features -> Linear -> SiLU -> Linear, added in every residual block.
    assert (unet.time_embedding.linear_1.in_features, unet.time_embedding.linear_2.out_features) == (512, 512)
    assert all(layer.resnet.time_emb_proj.in_features == 512 for layer in layers)


def test_report_unet_time_features_are_the_reports_sinusoids():
    from mmdemo.models.diffusion.report_nets import ReportUNet

    unet = ReportUNet(block_out_channels=(8, 8), norm_num_groups=4, num_heads=2, time_embedding_dim=8,
                      conv_out_channels=8, cross_attention_dim=4)  # fmt: skip
    t = torch.tensor([0.0, 7.0, 999.0])
    factor = 10000 ** (torch.arange(4) / 4)  # the report: 10000^(i / (d/2)), sin first then cos
    expected = torch.cat([torch.sin(t[:, None] / factor), torch.cos(t[:, None] / factor)], dim=-1)
    torch.testing.assert_close(unet.time_proj(t), expected)


def test_report_networks_run_and_learn_at_tiny_size():
    """Random weights, tiny widths: shapes through encode/decode and the UNet, and gradients reach every layer."""
    from mmdemo.models.diffusion.report_nets import ReportUNet, ReportVQVAE

    torch.manual_seed(0)
    vq = ReportVQVAE(block_out_channels=(8, 16), norm_num_groups=4, num_heads=2, num_embeddings=16)
    z = vq.encode(torch.randn(2, 3, 16, 16)).latents
    assert z.shape == (2, 4, 8, 8) and vq.decode(z, force_not_quantize=False).sample.shape == (2, 3, 16, 16)
    unet = ReportUNet(block_out_channels=(8, 16, 16), norm_num_groups=4, num_heads=2, time_embedding_dim=8,
                      conv_out_channels=8, cross_attention_dim=6)  # fmt: skip
    text = torch.randn(2, 5, 6)
    out = unet(z, torch.tensor([3, 900]), encoder_hidden_states=text).sample
    assert out.shape == z.shape
    out.square().mean().backward()
    assert all(p.grad is not None for p in unet.parameters())
    # The cross-attention really reads the text: other text, other output.
    other = unet(z, torch.tensor([3, 900]), encoder_hidden_states=torch.randn(2, 5, 6)).sample
    assert not torch.allclose(out, other)


def test_sampling_presets_sample_as_the_report_did():
    """The "report" preset: no guidance (100 DDPM steps pixel, 1000 latent); "fast" keeps our guidance."""
    for model_id, steps in (("pixel-diffusion", 100), ("latent-diffusion", 1000)):
        spec = get_spec(model_id)
        report = spec.option_defaults("full", "report", "cuda")
        assert (report["steps"], report["guidance"]) == (steps, 1.0)
        assert spec.option_defaults("full", "fast", "cuda")["guidance"] == 3.0


def test_tinyllama_report_prompt_format_pads_the_prompt_and_targets_the_leading_bos(monkeypatch):
    """The report's code: ``tokenizer(prompt, padding="max_length", max_length=9)`` (with ``<s>``, pads attended),
    then BOS and the queries; the caption keeps its leading ``<s>``, which is a target."""
    from mmdemo.captioners.base import TrainingInit
    from mmdemo.models.qformer import network as qf

    torch.manual_seed(0)
    config = {**get_spec("qformer-tinyllama").tiny_config, "prompt_format": "report"}
    network = qf.QFormerLlamaNetwork.for_training(config, TrainingInit(train_captions=["a red circle", "a blue square"])).eval()
    tok = network.tokenizer
    words = tok(config["prompt"], add_special_tokens=False)["input_ids"]
    expected = [tok.bos_token_id, *words] + [tok.pad_token_id] * max(0, qf.REPORT_PROMPT_TOKENS - 1 - len(words))
    assert network.prompt_ids.tolist() == expected
    seen = {}
    real_forward = network.llm.forward

    def spy(**kwargs):
        seen.update(kwargs)
        return real_forward(**kwargs)

    monkeypatch.setattr(network.llm, "forward", spy)
    from PIL import Image

    features = network.encode_images(network.preprocess([Image.new("RGB", (40, 30), (200, 30, 30))]))
    network(features, ["a red circle"])
    width = len(expected) + 1 + network.config.num_query_tokens
    assert seen["labels"][0, width].item() == tok.bos_token_id  # the first caption target is <s>
    assert seen["attention_mask"][0, :width].tolist() == [1] * width  # the prompt's pads are attended


def test_xattn_report_settings_squash_and_drop_the_image_features():
    import numpy as np
    from PIL import Image

    from mmdemo.models.xattn.network import XAttnCaptionNetwork, XAttnConfig, preprocess_images

    config = XAttnConfig(**{**get_spec("resnet18-xattn").tiny_config, "image_dropout": 0.2, "resize": "squash"})
    wide = Image.fromarray(np.tile(np.arange(160, dtype=np.uint8)[None, :, None], (40, 1, 3)))  # 160 x 40
    squashed = preprocess_images(config, [wide])
    cropped = preprocess_images(XAttnConfig(**get_spec("resnet18-xattn").tiny_config), [wide])
    size = config.image_size
    # The squash keeps the whole width (dark left edge to bright right edge); the crop only the middle.
    assert squashed[0, 0, 0, 0] < cropped[0, 0, 0, 0] and squashed[0, 0, 0, size - 1] > cropped[0, 0, 0, size - 1]
    torch.manual_seed(0)
    network = XAttnCaptionNetwork.build(config)
    features = torch.randn(2, network.num_image_tokens, network.vision_proj.in_features)
    network.train()
    first, second = network.memory(features)[0][0], network.memory(features)[0][0]
    assert not torch.allclose(first, second)  # dropout on the projected features while training
    network.eval()
    torch.testing.assert_close(network.memory(features)[0][0], network.memory(features)[0][0])
