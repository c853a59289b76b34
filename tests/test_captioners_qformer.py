"""The BLIP-2 Q-Former captioners (``qformer-bert``, ``qformer-tinyllama``): official-weight compatibility proven
on the meta device, parameter counts, the image-grounded [DEC] mask, prompt assembly, decoding, and the
training script end to end on tiny configurations with a reload through the public API."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import load_script
from PIL import Image

from mmdemo.captioners.base import CaptionNetwork, TrainingInit
from mmdemo.captioners.qformer import QFormerBertCaptioner
from mmdemo.models.qformer import network as qf
from mmdemo.params import count_parameters
from mmdemo.registry import get_spec

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = [
    "a red circle on the left",
    "a blue square on the right",
    "a small green triangle at the top , on a white background",
    "there are two objects , the blue rhombus is on the left while the green triangle is at the top",
] * 3


def shapes(module: torch.nn.Module | dict, prefix: str = "") -> dict[str, tuple[int, ...]]:
    state = module if isinstance(module, dict) else module.state_dict()
    return {k.removeprefix(prefix): tuple(v.shape) for k, v in state.items() if k.startswith(prefix)}


def full_network(model_id: str) -> qf._QFormerNetwork:
    from mmdemo import adapter_class

    spec = get_spec(model_id)
    return adapter_class(spec).build_network(spec.full_config, device="meta")


@pytest.fixture(scope="module")
def itm_reference() -> dict[str, torch.Tensor]:
    """State dict (meta tensors) of transformers' own class for Salesforce/blip2-itm-vit-g."""
    from transformers import Blip2ForImageTextRetrieval

    with torch.device("meta"):
        return Blip2ForImageTextRetrieval(qf.blip2_itm_reference_config()).state_dict()


@pytest.fixture(scope="module")
def tinyllama_reference() -> dict[str, torch.Tensor]:
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        return LlamaForCausalLM(qf.llm_config("TinyLlama/TinyLlama-1.1B-Chat-v1.0")).state_dict()


def tiny(model_id: str, **override) -> qf._QFormerNetwork:
    torch.manual_seed(0)
    cls = qf.QFormerBertNetwork if model_id == "qformer-bert" else qf.QFormerLlamaNetwork
    return cls.for_training({**get_spec(model_id).tiny_config, **override}, TrainingInit(train_captions=CAPTIONS)).eval()


def images(n: int = 3) -> list[Image.Image]:
    colours = [(215, 35, 35), (35, 85, 225), (35, 160, 55), (240, 205, 20)]
    return [Image.new("RGB", (64 + 7 * i, 64), colours[i % 4]) for i in range(n)]


# ----------------------------------------------------------------------------- official weights, meta builds


def test_reference_config_is_blip2_itm_vit_g():
    config = qf.blip2_itm_reference_config()
    vision, qformer = config.vision_config, config.qformer_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size, vision.patch_size) == (
        1408,
        39,
        224,
        14,
    )
    assert (qformer.hidden_size, qformer.num_hidden_layers, qformer.vocab_size) == (768, 12, 30523)
    assert qformer.use_qformer_text_input and qformer.cross_attention_frequency == 2
    assert qformer.encoder_hidden_size == 1408 and config.num_query_tokens == 32


def test_bert_loads_the_vit_strictly_and_its_qformer_has_blip2_shapes(itm_reference):
    network = full_network("qformer-bert")
    ours = shapes(network)
    used = qf.official_state_dict("qformer-bert", itm_reference)  # raises on any unaccounted checkpoint key
    assert set(used) == {k for k in ours if k.startswith("vision_model.")}
    assert {k: ours[k] for k in used} == shapes(used)
    # The Q-Former trained from scratch is BLIP-2's own in every name and shape (only not loaded).
    same_names = [k for k in ours if k.startswith(("qformer.", "embeddings.", "query_tokens"))]
    assert same_names and {k: ours[k] for k in same_names} == {
        k: tuple(itm_reference[k].shape) for k in same_names
    }
    assert set(ours) - set(itm_reference) == {"lm_head.bias", "lm_head.transform.dense.weight",
                                              "lm_head.transform.dense.bias", "lm_head.transform.LayerNorm.weight",
                                              "lm_head.transform.LayerNorm.bias"}  # fmt: skip


def test_tinyllama_every_parameter_comes_from_a_public_checkpoint(itm_reference, tinyllama_reference):
    network = full_network("qformer-tinyllama")
    ours = shapes(network)
    used = qf.official_state_dict("qformer-tinyllama", itm_reference, tinyllama_reference)
    # Strict: only the new projection is not in a public checkpoint; nothing else is missing or extra.
    assert set(ours) - set(used) == {"language_projection.weight", "language_projection.bias"}
    assert set(used) <= set(ours)
    assert {k: ours[k] for k in used} == shapes(used)
    # The LLM is exactly transformers' LlamaForCausalLM with TinyLlama's config, under the prefix "llm.".
    assert shapes(network, "llm.") == shapes(tinyllama_reference)
    # Unused BLIP-2 keys are exactly the ones listed (text side of the Q-Former, ITC/ITM heads).
    unused = set(itm_reference) - set(used)
    patterns = [re.compile(p) for p in qf.BLIP2_ITM_UNUSED["qformer-tinyllama"]]
    assert unused and all(any(p.search(k) for p in patterns) for k in unused)
    assert {k.split(".")[0] for k in unused} == {"qformer", "embeddings", "vision_projection", "text_projection",
                                                 "itm_head"}  # fmt: skip


def test_unknown_checkpoint_key_is_an_error(itm_reference):
    with pytest.raises(ValueError, match="unexpected keys"):
        qf.official_state_dict("qformer-bert", {**itm_reference, "surprise.weight": torch.zeros(1)})


def test_parameter_counts_and_frozen_parts():
    bert, llama = full_network("qformer-bert"), full_network("qformer-tinyllama")
    vit_trunk = sum(p.numel() for n, p in bert.named_parameters() if n.startswith(bert.frozen_prefixes))
    total, trainable = count_parameters(bert)
    assert total - trainable == vit_trunk and 985e6 < vit_trunk < 987e6  # EVA ViT-g/14 minus its last block
    assert (
        trainable
        == sum(p.numel() for n, p in bert.named_parameters() if not n.startswith("vision_model.")) + 2816
    )
    llm = sum(p.numel() for p in llama.llm.parameters())
    assert llm == 1_100_048_384  # TinyLlama-1.1B
    total, trainable = count_parameters(llama)
    assert total - trainable == vit_trunk + llm
    expected = sum(p.numel() for n, p in llama.named_parameters() if n.startswith(("qformer.", "query_tokens",
                   "language_projection.", "vision_model.post_layernorm.")))  # fmt: skip
    assert trainable == expected
    assert all(not p.requires_grad for p in llama.llm.parameters())


def test_params_cli_rows():
    from mmdemo.params import param_row

    for model_id in ("qformer-bert", "qformer-tinyllama"):
        row = param_row(get_spec(model_id))
        assert row.total and row.trainable and row.note and "report" in row.note


# ----------------------------------------------------------------------------- [DEC] decoding path


def test_image_grounded_mask_pattern():
    text_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    allowed = qf.image_grounded_text_mask(2, text_mask, torch.float32)[:, 0] == 0  # (B, 5, 5)
    assert allowed[:, :2, :2].all() and not allowed[:, :2, 2:].any()  # queries: only queries
    assert allowed[:, 2:, :2].all()  # text: every query
    assert torch.equal(allowed[0, 2:, 2:], torch.tril(torch.ones(3, 3, dtype=torch.bool)))  # causal text
    assert not allowed[1, 2:, 4].any()  # padding is never attended


def test_text_is_causal_and_queries_never_see_text():
    network = tiny("qformer-bert")
    features = network.encode_images(network.preprocess(images(2)))
    embeds = network.image_embeds(features)
    ids, mask = network.encode_captions(["a red circle on the left", "a blue square"])
    full = network.text_logits(embeds, ids, mask)
    prefix = network.text_logits(embeds, ids[:, :3], mask[:, :3])
    torch.testing.assert_close(full[:, :3], prefix)  # later tokens do not change earlier predictions
    # The query half of the joint pass equals the query-only pass: queries do not attend to text.
    q = network.config.num_query_tokens
    joint = network.qformer(
        query_embeds=network.embeddings(input_ids=ids, query_embeds=network.query_tokens.expand(2, -1, -1)),
        query_length=q,
        attention_mask=qf.image_grounded_text_mask(q, mask, torch.float32),
        encoder_hidden_states=embeds,
    ).last_hidden_state[:, :q]
    torch.testing.assert_close(joint, network.query_states(embeds))
    assert (ids[:, 0] == network.dec_token_id).all()


def test_bert_each_sequence_stops_at_its_own_sep(monkeypatch):
    network = tiny("qformer-bert")
    tok = network.tokenizer
    red, blue = tok.convert_tokens_to_ids("red"), tok.convert_tokens_to_ids("blue")
    calls = []

    def scripted(image_embeds, ids, mask):  # row 0 ends after 1 word, row 1 after 3
        calls.append(ids.shape[1])
        logits = torch.zeros(ids.shape[0], ids.shape[1], network.config.vocab_size)
        step = ids.shape[1] - 1
        logits[0, -1, tok.sep_token_id if step >= 1 else red] = 1
        logits[1, -1, tok.sep_token_id if step >= 3 else blue] = 1
        return logits

    monkeypatch.setattr(network, "text_logits", scripted)
    out = network.generate(network.encode_images(network.preprocess(images(2))), max_new_tokens=20)
    assert out == ["red", "blue blue blue"]
    assert len(calls) == 4  # stopped as soon as every row had its [SEP]
    with pytest.raises(ValueError, match="greedily"):
        network.generate(torch.zeros(1, 3, 64, 64), num_beams=3)
    with pytest.raises(ValueError, match="decoding option"):
        network.generate(torch.zeros(1, 3, 64, 64), temperature=0.7)


def test_wordpiece_tokenizer_keeps_reference_spacing():
    network = tiny("qformer-bert")
    text = "there are two objects , the blue rhombus is on the left"
    ids = network.tokenizer(text)["input_ids"]
    assert network.tokenizer.decode(ids, skip_special_tokens=True) == text
    assert network.tokenizer.convert_ids_to_tokens(ids[0]) == "[CLS]" and len(network.tokenizer) <= 400


# ----------------------------------------------------------------------------- TinyLlama path


def test_prompt_bos_queries_then_caption_and_loss_on_caption_only(monkeypatch):
    network = tiny("qformer-tinyllama")
    features = network.encode_images(network.preprocess(images(2)))
    prefix = network.prefix_embeds(features)
    tok, q = network.tokenizer, network.config.num_query_tokens
    prompt = tok(qf.REPORT_PROMPT, add_special_tokens=False)["input_ids"]
    assert prefix.shape == (2, len(prompt) + 1 + q, network.config.llm_hidden)
    embed = network.llm.get_input_embeddings().weight
    torch.testing.assert_close(prefix[0, : len(prompt)], embed[prompt])
    torch.testing.assert_close(prefix[1, len(prompt)], embed[tok.bos_token_id])
    projected = network.language_projection(network.query_states(network.image_embeds(features)))
    torch.testing.assert_close(prefix[:, len(prompt) + 1 :], projected)

    seen = {}
    real_forward = network.llm.forward

    def spy(**kwargs):
        seen.update(kwargs)
        return real_forward(**kwargs)

    monkeypatch.setattr(network.llm, "forward", spy)
    network(features, ["a red circle", "a big blue square on the left"])
    labels, width = seen["labels"], prefix.shape[1]
    assert (labels[:, :width] == -100).all()
    caption = tok("a red circle\n", add_special_tokens=False)["input_ids"]
    assert labels[0, width : width + len(caption)].tolist() == caption and caption[-1] == network.newline_id
    assert (labels[0, width + len(caption) :] == -100).all()  # padding
    assert seen["attention_mask"][0].tolist() == [1] * (width + len(caption)) + [0] * (
        labels.shape[1] - width - len(caption)
    )


def test_llama_generate_uses_the_report_settings(monkeypatch):
    network = tiny("qformer-tinyllama")
    features = network.encode_images(network.preprocess(images(2)))
    seen = {}
    tok = network.tokenizer
    scripted = torch.tensor([tok("a red circle. it is round\n", add_special_tokens=False)["input_ids"]] * 2)

    def fake_generate(**kwargs):
        seen.update(kwargs)
        return scripted

    monkeypatch.setattr(network.llm, "generate", fake_generate)
    decoding = get_spec("qformer-tinyllama").option_defaults("demo")
    decoding.pop("batch_size")  # the adapter's, not the network's
    out = network.generate(features, **decoding)
    assert out == ["a red circle."] * 2  # cut at the end of the first sentence
    assert seen["repetition_penalty"] == 1.5 and seen["max_new_tokens"] == 30 and seen["do_sample"] is False
    assert network.newline_id in seen["eos_token_id"] and tok.eos_token_id in seen["eos_token_id"]
    assert "input_ids" not in seen and seen["inputs_embeds"].shape[:2] == seen["attention_mask"].shape
    monkeypatch.undo()
    real = network.generate(features, max_new_tokens=5)  # the real generate runs and returns strings
    assert len(real) == 2 and all(isinstance(c, str) and "\n" not in c for c in real)
    with pytest.raises(ValueError, match="repetition_penalty"):
        network.generate(features, repetition_penalty=0.5)


def test_first_sentence():
    assert qf.first_sentence(" a dog runs. then it sits") == "a dog runs."
    assert qf.first_sentence("a red circle on the left\nsecond line") == "a red circle on the left"
    assert qf.first_sentence("no end mark") == "no end mark"
    assert qf.first_sentence("3.5 metres away! yes") == "3.5 metres away!"


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("model_id", ["qformer-bert", "qformer-tinyllama"])
def test_save_load_roundtrip_is_strict_and_exact(tmp_path, model_id):
    network = tiny(model_id)
    pixels = network.preprocess(images(2))
    network.save_pretrained(tmp_path, dtype=torch.float16)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_frozen_included"] is True and config["_network"].endswith(type(network).__name__)
    loaded = CaptionNetwork.from_pretrained(tmp_path)
    assert type(loaded) is type(network)
    assert loaded.encoder_fingerprint() != "" and shapes(loaded) == shapes(network)
    half = {k: v.half().float() for k, v in network.state_dict().items()}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in half.items())
    network.load_state_dict(half)  # the original, rounded the way the checkpoint stores it, decodes the same
    network.eval(), loaded.eval()
    with torch.no_grad():
        captions = loaded.generate(loaded.encode_images(pixels), max_new_tokens=4)
        assert captions == network.generate(network.encode_images(pixels), max_new_tokens=4)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


def test_full_size_checkpoint_loads_frozen_parts_from_public_files(tmp_path):
    """The full-profile path at tiny size: our checkpoint without frozen parts + 'public' folders in the
    official layouts (BLIP-2 ITM key names; a LlamaForCausalLM save_pretrained folder)."""
    from safetensors.torch import save_file

    stage1 = tiny("qformer-bert")
    network = tiny("qformer-tinyllama")
    blip2 = tmp_path / "blip2"
    blip2.mkdir()
    # BLIP-2 ITM layout: its own names; the text side of the Q-Former is there too (and unused).
    official = {k: v.contiguous() for k, v in stage1.state_dict().items() if k.startswith(("qformer.", "embeddings.",
                "query_tokens"))}  # fmt: skip
    official.update(
        {f"vision_model.{k}": v.contiguous() for k, v in network.vision_model.state_dict().items()}
    )
    save_file(official, str(blip2 / "model.safetensors"))
    network.llm.save_pretrained(tmp_path / "llm")
    network.save_pretrained(tmp_path / "ours", include_frozen=False)
    saved = set(json.loads((tmp_path / "ours" / "config.json").read_text()))
    assert "_frozen_included" in saved
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ours" / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    assert not any(k.startswith(("llm.", "vision_model.encoder.")) for k in keys)
    assert "vision_model.post_layernorm.weight" in keys  # ln_vision is trained, so it is ours
    with pytest.raises(ValueError, match="sources"):
        CaptionNetwork.from_pretrained(tmp_path / "ours")
    loaded = CaptionNetwork.from_pretrained(tmp_path / "ours", sources={"vision": blip2, "language_model": tmp_path / "llm"})
    for k, v in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


# ----------------------------------------------------------------------------- training script, end to end


@pytest.fixture(scope="module")
def shapes_data(shapes_dataset) -> Path:
    return shapes_dataset(n=20, seed=3)


def _train(model_id: str, data: Path, out: Path, *extra: str) -> dict:
    train_captioner = load_script("train_captioner")
    args = train_captioner.parse_args(["--model", model_id, "--size", "tiny", "--data", str(data), "--out", str(out),
                                       "--max-steps", "12", "--batch-size", "8", "--lr", "2e-3",
                                       "--captions-per-image", "5", "--checkpointing-steps", "100", *extra])  # fmt: skip
    train_captioner.main(args)
    return json.loads((out / "train_log.json").read_text())


def _reload_and_caption(model_id: str, out: Path, root: Path, monkeypatch, data: Path) -> list[str]:
    import mmdemo

    shutil.copytree(out, root / "demo" / model_id, ignore=shutil.ignore_patterns("state", "feature_cache"))
    monkeypatch.setenv("MMDEMO_CHECKPOINTS", str(root))
    captioner = mmdemo.load_captioner(model_id, profile="demo", device="cpu")
    pictures = sorted((data / "Images").glob("*.png"))[:2]
    return [result.caption for result in captioner.caption([str(p) for p in pictures])]


@pytest.mark.slow
def test_training_script_learns_and_reloads_both_models(shapes_data, tmp_path, monkeypatch):
    pretrain_tiny_lm = load_script("pretrain_tiny_lm")

    # qformer-bert: Q-Former from scratch on the (here random) frozen tiny ViT.
    log = _train("qformer-bert", shapes_data, tmp_path / "bert")
    losses = [loss for _, loss in log["history"]]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3
    captions = _reload_and_caption(
        "qformer-bert", tmp_path / "bert", tmp_path / "ckpt", monkeypatch, shapes_data
    )
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)

    # qformer-tinyllama: the demo recipe in miniature: pretrain the LM, take stage 1 from qformer-bert.
    init = tmp_path / "init"
    pretrain_tiny_lm.main(pretrain_tiny_lm.parse_args(["--data", str(shapes_data), "--out", str(init / "llm"),
                                                       "--steps", "3", "--batch-size", "8"]))  # fmt: skip
    shutil.copytree(
        tmp_path / "bert", init / "stage1", ignore=shutil.ignore_patterns("state", "feature_cache")
    )
    log = _train("qformer-tinyllama", shapes_data, tmp_path / "llama", "--init-dir", str(init))
    losses = [loss for _, loss in log["history"]]
    # Slower here: only the soft prompt can move an LM pretrained for 3 steps (12 steps: about 6.16 -> 5.97).
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05
    captions = _reload_and_caption(
        "qformer-tinyllama", tmp_path / "llama", tmp_path / "ckpt", monkeypatch, shapes_data
    )
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    # The frozen LM in the trained checkpoint is exactly the pretrained one.
    from safetensors.torch import load_file

    lm = load_file(str(init / "llm" / "model.safetensors"))
    ours = load_file(str(tmp_path / "llama" / "model.safetensors"))
    assert all(torch.equal(ours[f"llm.{k}"], v) for k, v in lm.items())


def test_bad_images_get_clear_messages(tmp_path):
    from mmdemo.inputs import InputError
    from mmdemo.registry import get_spec as spec_of
    from mmdemo.weights import ResolvedWeights

    network = tiny("qformer-bert")
    captioner = QFormerBertCaptioner(spec_of("qformer-bert"), ResolvedWeights.demo(spec_of("qformer-bert"), tmp_path),
                                        network, "cpu")  # fmt: skip
    with pytest.raises(InputError, match="This file is not a readable image"):
        captioner.caption([b"not an image"])
    odd = [Image.new("L", (1, 1)), Image.new("RGBA", (40, 90)), Image.new("P", (300, 20))]
    assert len(captioner.caption(odd, max_new_tokens=3)) == 3


def test_full_size_training_init_reads_public_layouts(tmp_path):
    """``for_training(sources=...)`` at tiny size: BLIP-2 ITM key names, a bare bert vocab.txt folder, a
    LlamaForCausalLM folder with its tokenizer: every used weight is copied, the rest is where it belongs."""
    from safetensors.torch import save_file

    stage1, llama = tiny("qformer-bert"), tiny("qformer-tinyllama")
    blip2 = tmp_path / "blip2"
    blip2.mkdir()
    official = {k: v.contiguous() for k, v in stage1.state_dict().items() if not k.startswith("lm_head.")}
    official["itm_head.weight"] = torch.zeros(2, 128)  # present in the real file, listed as unused
    save_file(official, str(blip2 / "model.safetensors"))
    bert = tmp_path / "bert"
    bert.mkdir()
    vocab = [
        t for t, _ in sorted(stage1.tokenizer.get_vocab().items(), key=lambda kv: kv[1]) if t != qf.DEC_TOKEN
    ]
    (bert / "vocab.txt").write_text("".join(t + "\n" for t in vocab))
    (bert / "tokenizer_config.json").write_text('{"do_lower_case": true, "model_max_length": 512}')
    llama.llm.save_pretrained(tmp_path / "llm")
    llama.tokenizer.save_pretrained(tmp_path / "llm")
    config = get_spec("qformer-bert").tiny_config
    net = qf.QFormerBertNetwork.for_training(config, TrainingInit(sources={"vision": blip2, "tokenizer": bert}))
    assert net.dec_token_id == len(vocab) and all(
        torch.equal(v, official[f"vision_model.{k}"]) for k, v in net.vision_model.state_dict().items()
    )
    net = qf.QFormerLlamaNetwork.for_training(
        get_spec("qformer-tinyllama").tiny_config, TrainingInit(sources={"vision": blip2, "language_model": tmp_path / "llm"})
    )
    state = net.state_dict()
    assert all(
        torch.equal(state[k], v)
        for k, v in official.items()
        if k.startswith(("vision_model.", "query_tokens"))
    )
    assert torch.equal(state["qformer.encoder.layer.0.output_query.dense.weight"],
                       official["qformer.encoder.layer.0.output_query.dense.weight"])  # fmt: skip
    assert all(torch.equal(state[f"llm.{k}"], v) for k, v in llama.llm.state_dict().items())
    assert net.tokenizer("a red circle")["input_ids"] == llama.tokenizer("a red circle")["input_ids"]
