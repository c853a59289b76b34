"""The cross-attention Transformer-decoder captioners: official-weight compatibility (meta builds), parameter
counts, vocabulary, decoding (KV cache, per-sequence EOS, beam search) and checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mmdemo.captioners.base import TrainingInit
from mmdemo.captioners.vocab import EOS_ID, PAD_ID, SOS_ID, UNK_ID, Vocabulary, tokenize
from mmdemo.models.xattn.network import XAttnCaptionNetwork, XAttnConfig
from mmdemo.params import count_parameters
from mmdemo.registry import get_spec

CAPTIONS = [
    "a red circle on the left",
    "a blue square on the right",
    "a small green triangle at the top , on a white background",
    "a large red square at the bottom",
] * 3


def shapes(module: torch.nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {
        k.removeprefix(prefix): tuple(v.shape) for k, v in module.state_dict().items() if k.startswith(prefix)
    }


def full_network(model_id: str) -> XAttnCaptionNetwork:
    from mmdemo import adapter_class

    spec = get_spec(model_id)
    return adapter_class(spec).build_network(spec.full_config, device="meta")


def tiny_network(model_id: str = "resnet18-xattn", **override) -> XAttnCaptionNetwork:
    torch.manual_seed(0)
    config = {**get_spec(model_id).tiny_config, **override}
    return XAttnCaptionNetwork.for_training(config, TrainingInit(train_captions=CAPTIONS)).eval()


# ----------------------------------------------------------------------------- official weights, meta builds


def test_resnet_trunk_matches_torchvision_resnet18():
    import torchvision

    network = full_network("resnet18-xattn")
    assert next(network.parameters()).device.type == "meta"
    with torch.device("meta"):
        reference = torchvision.models.resnet18()
    expected = {k: v for k, v in shapes(reference).items() if not k.startswith("fc.")}
    assert shapes(network, "vision.") == expected
    assert all(not p.requires_grad for p in network.vision.parameters())


def test_timm_tv_in1k_mirror_uses_torchvision_names():
    # timm/resnet18.tv_in1k holds torchvision's IMAGENET1K_V1 weights in timm's ResNet; its names must be
    # torchvision's for `official_vision_state` to load it strictly into torchvision's class.
    import timm
    import torchvision

    with torch.device("meta"):
        timm_resnet = timm.create_model("resnet18", pretrained=False)
        tv_resnet = torchvision.models.resnet18()
    assert shapes(timm_resnet) == shapes(tv_resnet)


def test_clip_visual_matches_open_clip_vit_b_32():
    import open_clip

    network = full_network("clipb32-xattn")
    with torch.device("meta"):
        reference = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True, device="meta")
    assert shapes(network, "vision.") == shapes(reference.visual)
    # The openai tag is QuickGELU: same names either way, so check the activation itself.
    assert type(network.vision.transformer.resblocks[0].mlp.gelu) is type(
        reference.visual.transformer.resblocks[0].mlp.gelu
    )
    assert network.num_image_tokens == 49 and network.vision_proj.in_features == 768
    assert network.config.d_model == 768


def stated_decoder(d: int, layers: int = 6, ff: int = 2048) -> int:
    attention = 4 * (d * d + d)
    return layers * (2 * attention + d * ff + ff + ff * d + d + 3 * 2 * d)


@pytest.mark.parametrize(
    "model_id, d, frozen",
    [("resnet18-xattn", 512, 11_176_512), ("clipb32-xattn", 768, 87_849_216)],
)
def test_parameter_counts(model_id, d, frozen):
    network = full_network(model_id)
    total, trainable = count_parameters(network)
    vocab = network.config.vocab_size
    decoder = sum(p.numel() for p in network.layers.parameters())
    assert decoder == stated_decoder(d)
    assert total - trainable == frozen
    vision_dim = network.vision_proj.in_features
    expected_trainable = decoder + 2 * vocab * d + vocab + vision_dim * d + d + 49 * d
    assert trainable == expected_trainable
    assert stated_decoder(512) == 25_224_192  # the report's stated decoder alone exceeds its 21.5M trainable


def test_params_cli_rows_for_both_models():
    from mmdemo.params import param_row

    for model_id in ("resnet18-xattn", "clipb32-xattn"):
        row = param_row(get_spec(model_id))
        assert row.total and row.trainable and "21.5M" in row.note


# ----------------------------------------------------------------------------- vocabulary


def test_vocabulary_rules(tmp_path):
    vocab = Vocabulary.build(["A dog runs .", "a dog sits .", "a cat"], max_len=6)
    assert vocab.itos[:4] == ["<PAD>", "<SOS>", "<EOS>", "<UNK>"]
    assert "dog" in vocab.stoi and "cat" not in vocab.stoi  # frequency >= 2
    assert tokenize("Two dogs, one ball.") == ["two", "dogs", ",", "one", "ball", "."]
    ids = vocab.encode("a cat runs . a dog a dog")
    assert ids[0] == SOS_ID and ids[-1] == EOS_ID and len(ids) == 6 and UNK_ID in ids
    assert vocab.decode([SOS_ID, vocab.stoi["a"], vocab.stoi["dog"], EOS_ID, vocab.stoi["a"]]) == "a dog"
    vocab.save(tmp_path)
    again = Vocabulary.load(tmp_path)
    assert again.itos == vocab.itos and again.max_len == 6


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("model_id", ["resnet18-xattn", "clipb32-xattn"])
def test_kv_cache_matches_naive_decoding(model_id):
    network = tiny_network(model_id)
    features = torch.randn(5, network.num_image_tokens, network.vision_proj.in_features)
    with torch.no_grad():
        cached = network.generate_ids(features, max_new_tokens=20, use_cache=True, ignore_eos=True)
        naive = network.generate_ids(features, max_new_tokens=20, use_cache=False, ignore_eos=True)
        # Logits too, not only the argmax: the cache must reproduce the full-prefix computation.
        memory = network.memory(features)
        full = network.decode(cached[:, :-1], memory)
        caches = [{} for _ in network.layers]
        steps = [network.decode(cached[:, t : t + 1], memory, start=t, caches=caches) for t in range(20)]
    assert cached.shape == (5, 21)
    assert torch.equal(cached, naive)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)


def test_each_sequence_stops_at_its_own_eos(monkeypatch):
    network = tiny_network()
    vocab_size = network.config.vocab_size
    word = 5
    stop_at = {0: 1, 1: 3, 2: 2}  # row -> step at which it says <EOS>
    calls = []

    def scripted(tokens, memory_kv, *, start=0, caches=None):
        step = start if caches is not None else tokens.shape[1] - 1
        calls.append(step)
        logits = torch.zeros(tokens.shape[0], tokens.shape[1], vocab_size)
        for row in range(tokens.shape[0]):
            logits[row, -1, EOS_ID if step == stop_at[row] else word] = 1.0
        return logits

    monkeypatch.setattr(network, "decode", scripted)
    ids = network.generate_ids(torch.randn(3, network.num_image_tokens, 512), max_new_tokens=10)
    assert calls == [0, 1, 2, 3]  # stops as soon as every row has ended, not at max_new_tokens
    assert ids.tolist() == [
        [SOS_ID, word, EOS_ID, PAD_ID, PAD_ID],
        [SOS_ID, word, word, word, EOS_ID],
        [SOS_ID, word, word, EOS_ID, PAD_ID],
    ]
    assert [len(c.split()) for c in network.generate(torch.randn(3, network.num_image_tokens, 512))] == [
        1,
        3,
        2,
    ]


def test_beam_width_one_equals_greedy_and_wider_beams_are_valid():
    network = tiny_network()
    features = torch.randn(4, network.num_image_tokens, 512)
    with torch.no_grad():
        greedy = network.generate_ids(features, max_new_tokens=12)
        beam1 = network._beam_search(features, 12, 1, 1.0, True)
        beam1_naive = network._beam_search(features, 12, 1, 1.0, False)
        beam4 = network._beam_search(features, 12, 4, 1.0, True)
        beam4_naive = network._beam_search(features, 12, 4, 1.0, False)
    width = greedy.shape[1]
    assert torch.equal(beam1[:, :width], greedy) and (beam1[:, width:] == PAD_ID).all()
    assert torch.equal(beam1, beam1_naive)
    assert torch.equal(beam4, beam4_naive)  # cache reordering between beams is right
    assert beam4.shape[0] == 4 and (beam4[:, 0] == SOS_ID).all()
    assert len(network.generate(features, num_beams=3)) == 4
    with pytest.raises(ValueError, match="num_beams"):
        network.generate(features, num_beams=0)
    with pytest.raises(ValueError, match="temperature"):
        network.generate(features, temperature=0.7)


# ----------------------------------------------------------------------------- checkpoints and the adapter


def test_save_load_roundtrip_fp16_and_caption(tmp_path, monkeypatch):
    import mmdemo

    network = tiny_network()
    network.save_pretrained(tmp_path / "demo" / "resnet18-xattn", dtype=torch.float16)
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(tmp_path))
    captioner = mmdemo.load_captioner("resnet18-xattn", profile="demo", device="cpu")
    loaded = captioner.network
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert not any(p.requires_grad for p in loaded.vision.parameters())
    features = torch.randn(2, loaded.num_image_tokens, 512)
    expected = network.half().float().generate_ids(features, max_new_tokens=8)
    assert torch.equal(loaded.generate_ids(features, max_new_tokens=8), expected)
    images = [
        Image.new("L", (40, 30), 128),
        Image.new("RGBA", (70, 90)),
        Image.new("RGB", (1, 1)),
        Image.new("P", (64, 64)),
    ]
    captions = [r.caption for r in captioner.caption(images, batch_size=3)]
    assert len(captions) == 4 and all(isinstance(c, str) for c in captions)
    default_batch = [r.caption for r in captioner.caption(images[:2])]
    assert default_batch == [r.caption for r in captioner.caption(images[:2], batch_size=1)]


def test_bad_input_is_a_clear_error():
    from mmdemo.captioners.xattn import XAttnCaptioner
    from mmdemo.inputs import InputError
    from mmdemo.weights import ResolvedWeights

    spec = get_spec("resnet18-xattn")
    captioner = XAttnCaptioner(spec, ResolvedWeights.demo(spec, Path("unused")), tiny_network(), "cpu")
    with pytest.raises(InputError, match="This file is not a readable image"):
        captioner.caption([b"not an image"])
    with pytest.raises(InputError, match="No image was given"):
        captioner.caption([])


def test_full_size_checkpoint_without_frozen_parts_needs_sources(tmp_path):
    # The full-profile path: our checkpoint holds the trained parts; the encoder comes from the official
    # source folder (a torchvision/timm-format file, `fc.*` dropped). Exercised with the tiny ResNet.
    from safetensors.torch import save_file

    network = tiny_network()
    source = tmp_path / "timm-resnet18"
    source.mkdir()
    official = {
        k.removeprefix("vision."): v for k, v in network.state_dict().items() if k.startswith("vision.")
    }
    official["fc.weight"], official["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    save_file(official, str(source / "model.safetensors"))
    network.save_pretrained(tmp_path / "ours", include_frozen=False)
    with pytest.raises(ValueError, match="sources"):
        XAttnCaptionNetwork.from_pretrained(tmp_path / "ours")
    loaded = XAttnCaptionNetwork.from_pretrained(tmp_path / "ours", sources={"vision": source})
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_config_checks():
    with pytest.raises(ValueError, match="vision"):
        XAttnConfig(vision="resnet50")
    with pytest.raises(ValueError, match="divisible"):
        XAttnConfig(d_model=100, num_heads=8)
