"""The one registry of every model the app and the scripts know.

A model is an id plus a profile. The id picks a :class:`ModelSpec` here: what the
model is (architecture configuration, full and tiny), where its weights come from
(Hub repos and files, local folders) and what the course report measured for it.
*Where the weights actually are* is decided in :mod:`mmdemo.weights`; *how a
network is built* lives in the family module named by ``adapter``.

Config dicts are the keyword arguments of the family's own config dataclass, so the
registry stays importable without torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Literal

ModelKind = Literal["captioner", "generator"]

# Our own trained full-size weights (captioners, LoRA, pixel / latent diffusion) are published to one
# Hub repo with one sub-folder per model id; a fork can point the app at its own repo.
OWN_WEIGHTS_REPO = os.environ.get("MMDEMO_WEIGHTS_REPO", "mmdemo/mmdemo-weights")


@dataclass(frozen=True)
class HubFiles:
    """Files of one Hub repository that a model needs.

    Args:
        repo_id: Hub repository, e.g. ``"stabilityai/stable-diffusion-xl-base-1.0"``.
        files: what the loader needs inside ``subfolder``, one entry per requirement. An entry is a file name or
            an ``fnmatch`` pattern (``"model-*.safetensors"``: every shard); ``"a|b"`` means either one, the
            first the repository has is fetched (``"model.safetensors|pytorch_model.bin"``). Only these files
            are downloaded, and every entry must be satisfied before a folder counts as this source.
        subfolder: folder inside the repo ("" for the root).
        role: what this component is to the model ("vision encoder", "text encoder", ...).
        name: the component's name: a resolved model exposes this source as ``weights[name]``.
        entry: when set, ``weights[name]`` is this file inside the folder rather than the folder itself.
        also: further component names served by the same folder (a repo holding a model and its tokenizer).
        revision: a Hub branch, tag or commit to pin; ``None`` is the repo's default branch.
    """

    repo_id: str
    files: tuple[str, ...]
    subfolder: str = ""
    role: str = "weights"
    name: str = "weights"
    entry: str = ""
    also: tuple[str, ...] = ()
    revision: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.also)


@dataclass(frozen=True)
class ReportNumbers:
    """What the course report states for a model (Table 1 / Table 2); ``None`` where it states nothing."""

    total_params: float | None = None  # in parameters, e.g. 34.2e6
    trainable_params: float | None = None
    bleu: tuple[float, float, float, float] | None = None  # BLEU-1..4 on the Flickr8k validation split
    settings: str = ""  # sampling settings the report used, in words


OptionType = Literal["int", "float", "choice", "bool", "text"]


@dataclass(frozen=True)
class Option:
    """One setting a model takes (a sampling step count, a guidance scale, a pixel budget, ...), as data.

    The app renders a field per option, :mod:`mmdemo.inputs` checks a value against it (once, before any model
    runs), and the adapter receives the checked value. ``None`` as a value means "this model's default".

    Args:
        name: the keyword people pass (``steps``, ``guidance``, ``pixel_budget``); the UI's field label.
        type: ``"int"`` / ``"float"`` (a finite number in ``[minimum, maximum]``, ``int`` also whole),
            ``"choice"`` (one of ``choices``), ``"bool"``, ``"text"`` (free text matching ``pattern``).
        default: the value used when the request leaves the option out (``None``: the adapter derives it).
        help: one line for people: what it does and its default.
        minimum / maximum: inclusive bounds of a number; ``step``: a number must be a multiple of it.
        choices: the allowed values of a ``"choice"`` option.
        pattern: a regular expression a ``"text"`` value must match in full.
        report_default: the default under the "report" preset, when it differs (the report's 100 steps).
        cpu_default: the default under the "fast" preset on a CPU, when it differs (a smaller picture).
        aliases: other keywords accepted for this option (Infinity's ``cfg`` is its ``guidance``).
        ui: False for settings that are for scripts only and get no field in the app.
    """

    name: str
    type: OptionType
    default: Any = None
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()
    pattern: str | None = None
    report_default: Any = None
    cpu_default: Any = None
    aliases: tuple[str, ...] = ()
    ui: bool = True

    def default_for(self, preset: str = "fast", device: str = "cpu") -> Any:
        """The value a request without this option gets."""
        if preset == "report" and self.report_default is not None:
            return self.report_default
        if preset != "report" and self.cpu_default is not None and not str(device).startswith("cuda"):
            return self.cpu_default
        return self.default


@dataclass(frozen=True)
class GpuCost:
    """Rough GPU seconds of one call on an A100-class card, for ZeroGPU's time slots.

    Asking for too little aborts the call, asking for too much costs the visitor's quota, so the app asks
    for ``fixed + per_step * steps`` (``steps``: the request's or the preset's default).
    """

    fixed: float = 10.0  # loading / moving the model onto the GPU, encoding text or images
    per_step: float = 0.0


@dataclass(frozen=True)
class ModelSpec:
    """Everything the project knows about one model id.

    Args:
        id: stable id used by the app, the API and the scripts.
        display_name: what people read in the UI.
        kind: ``"captioner"`` or ``"generator"``.
        adapter: ``"module:Class"`` of the class implementing the uniform interface.
        full_config / tiny_config: keyword arguments of the family's config dataclass for the real model and
            for the small one trained offline on Shapes (same classes, smaller numbers).
        sources: the pretrained/published files the full profile needs, in load order.
        licence: licence of the weights people will run (the most restrictive component).
        report: the report's numbers, shown next to ours.
        options: the settings a request may give this model, with their types, ranges and defaults
            (:class:`Option`); the app renders them, :mod:`mmdemo.inputs` checks them.
        demo_options: for the demo profile, the fields of ``options`` that differ (``{"width": {"maximum": 64}}``).
        absent: why a model lacks a setting others take (``{"steps": "the pixel budget sets the scales"}``):
            a request that gives it anyway gets this in a notice.
        gpu_cost: the GPU time one call asks for on ZeroGPU.
        demo_layout: where each weight component sits in the demo checkpoint, relative to
            ``checkpoints/demo/<id>/`` (a file or a folder; ``"../<other id>"`` shares another model's demo
            checkpoint). Components not named here are the demo folder itself.
    """

    id: str
    display_name: str
    kind: ModelKind
    adapter: str
    full_config: dict[str, Any]
    tiny_config: dict[str, Any]
    sources: tuple[HubFiles, ...]
    licence: str
    description: str
    report: ReportNumbers = field(default_factory=ReportNumbers)
    options: tuple[Option, ...] = ()
    demo_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)
    gpu_cost: GpuCost = field(default_factory=GpuCost)
    demo_layout: dict[str, str] = field(default_factory=dict)

    @property
    def component_names(self) -> tuple[str, ...]:
        """Every weight component the model's loader asks for by name."""
        return tuple(dict.fromkeys(n for source in self.sources for n in source.names))

    def options_for(self, profile: str) -> dict[str, Option]:
        """The declared options under ``profile`` (``"full"`` or ``"demo"``), by name."""
        options = {o.name: o for o in self.options}
        if profile == "demo":
            options = {name: replace(o, **self.demo_options.get(name, {})) for name, o in options.items()}
        return options

    def option_defaults(self, profile: str, preset: str = "fast", device: str = "cpu") -> dict[str, Any]:
        """Every option's default for a request under ``profile`` and ``preset`` on ``device``."""
        return {name: o.default_for(preset, device) for name, o in self.options_for(profile).items()}

    @property
    def local_dir_name(self) -> str:
        """Folder name of this model under a checkpoint root (``checkpoints/<id>/``, ``checkpoints/demo/<id>/``)."""
        return self.id


def _own(model_id: str, *files: str, name: str, entry: str = "") -> HubFiles:
    return HubFiles(OWN_WEIGHTS_REPO, files, subfolder=model_id, role="our trained weights", name=name, entry=entry)


# ---------------------------------------------------------------- options shared by several models
_BATCH_SIZE = Option("batch_size", "int", 16, "pictures decoded together", minimum=1, maximum=256, ui=False)
_MAX_NEW_TOKENS = "max_new_tokens"
_NUM_BEAMS_HELP = "beam width (1 = greedy, as in the report)"


def _xattn_options(max_len: int) -> tuple[Option, ...]:
    # max_len counts <SOS>: a caption is at most max_len - 1 words + <EOS>, the longest the decoder was trained on.
    return (
        Option(_MAX_NEW_TOKENS, "int", max_len - 1, "caption length limit in tokens", minimum=1, maximum=max_len - 1),
        Option("num_beams", "int", 1, _NUM_BEAMS_HELP, minimum=1, maximum=16),
        Option("length_penalty", "float", 1.0, "beam scores divided by length to this power", minimum=0.0,
               maximum=5.0, ui=False),
        Option("use_cache", "bool", True, "keep attention keys/values between steps (False: the slow baseline)",
               ui=False),
        _BATCH_SIZE,
    )


def _steps(fast: int, report: int) -> Option:
    return Option("steps", "int", fast, f"sampling steps (fast preset {fast}, report preset {report})",
                  minimum=1, maximum=1000, report_default=report)


def _guidance(default: float, *aliases: str, report: float | None = None) -> Option:
    """``report``: the "report" preset's guidance where the report sampled differently (1.0: no guidance)."""
    extra = "" if report is None else f", report preset {report:g}"
    return Option("guidance", "float", default, f"classifier-free guidance scale (default {default:g}{extra})",
                  minimum=0.0, maximum=50.0, aliases=aliases, report_default=report)


def _side(name: str, default: int, maximum: int) -> Option:
    return Option(name, "int", default, f"picture {name} in pixels, a multiple of 8 (default {default})",
                  minimum=8, maximum=maximum, step=8)


def _demo_side(name: str) -> dict[str, Any]:
    return dict(default=32, maximum=64, help=f"picture {name} in pixels, a multiple of 8 (default 32)")


def _fixed_size(side: int) -> dict[str, str]:
    why = f"it draws pictures at its training size only ({side}x{side}; demo weights: 32x32)"
    return dict(width=why, height=why)


# A positive decimal number ("16", "0.75", ".5"; not "0", "0.0" or "1.2.3").
_POSITIVE = r"(?=\d*\.?\d*[1-9])(?:\d+\.?\d*|\.\d+)"

_XATTN_DECODER = dict(d_model=512, num_layers=6, num_heads=8, ff_dim=2048, dropout=0.1, max_len=50)
_XATTN_TINY_DECODER = dict(d_model=128, num_layers=2, num_heads=4, ff_dim=256, dropout=0.1, max_len=32)


def _xattn_captioner(model_id: str, vision: HubFiles, *, full: dict[str, Any], tiny_vision: str,
                     **fields: Any) -> ModelSpec:
    """A cross-attention captioner: ``vision`` is its frozen encoder's source, ``full`` its vision settings
    (and decoder width) over the report's decoder; the decoder, options and our checkpoint are shared."""
    return ModelSpec(
        id=model_id,
        kind="captioner",
        full_config={**_XATTN_DECODER, **full},
        tiny_config=dict(vision=tiny_vision, **_XATTN_TINY_DECODER),
        sources=(vision, _own(model_id, "model.safetensors", "config.json", "vocab.json", name="captioner")),
        options=_xattn_options(_XATTN_DECODER["max_len"]),
        demo_options={_MAX_NEW_TOKENS: dict(default=31, maximum=31)},  # the tiny decoder's max_len 32
        **fields,
    )


# SDXL base and SDXL + LoRA run the same pipeline from the same files with the same settings.
_SDXL_PIPELINE = dict(pipeline="stabilityai/stable-diffusion-xl-base-1.0", resolution=1024,
                      vae_fp16_fix="madebyollin/sdxl-vae-fp16-fix")
_SDXL_TINY_PIPELINE = dict(pipeline="tiny-sdxl-shapes", resolution=32, vae_fp16_fix=None)
_SDXL_FILES = ("model_index.json", "scheduler/*.json", "tokenizer/*", "tokenizer_2/*", "unet/config.json",
               "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json",
               "vae/diffusion_pytorch_model.fp16.safetensors", "text_encoder/config.json",
               "text_encoder/model.fp16.safetensors", "text_encoder_2/config.json",
               "text_encoder_2/model.fp16.safetensors")


def _sdxl_generator(model_id: str, role: str, *, full: dict[str, Any], tiny: dict[str, Any],
                    more_sources: tuple[HubFiles, ...] = (), **fields: Any) -> ModelSpec:
    """An SDXL model: the base pipeline's files (``role``: what they are to this model) then ``more_sources``,
    its config (``full`` and ``tiny`` add to it), report settings and options."""
    return ModelSpec(
        id=model_id,
        kind="generator",
        # vae_fp16_fix: optional, used on CUDA when its files are local or downloadable (not a required source).
        full_config={**_SDXL_PIPELINE, **full},
        tiny_config={**_SDXL_TINY_PIPELINE, **tiny},
        sources=(HubFiles("stabilityai/stable-diffusion-xl-base-1.0", _SDXL_FILES, name="pipeline", role=role),
                 *more_sources),
        report=ReportNumbers(settings="1024x1024, guidance 5.0, Euler, 100 steps"),
        options=(_steps(25, 100), _guidance(5.0), _side("width", 1024, 2048), _side("height", 1024, 2048)),
        demo_options=dict(width=_demo_side("width"), height=_demo_side("height")),
        **fields,
    )


def _our_diffusion(model_id: str, text_encoder: HubFiles, *, steps: tuple[int, int], side: int,
                   **fields: Any) -> ModelSpec:
    """Our pixel or latent diffusion: a frozen ``text_encoder`` (its folder also serves the tokenizer) and our
    checkpoint, which in the demo holds both; ``steps``: the fast and report presets' step counts; ``side``: the
    one picture size it draws. The report sampled without guidance (guidance 1.0); "fast" uses ours."""
    return ModelSpec(
        id=model_id,
        kind="generator",
        sources=(text_encoder, _own(model_id, "model.safetensors", "config.json", name="model")),
        demo_layout=dict(model=".", text_encoder="text_encoder", tokenizer="tokenizer"),
        options=(_steps(*steps), _guidance(3.0, report=1.0)),
        absent=_fixed_size(side),
        gpu_cost=GpuCost(per_step=0.01),
        **fields,
    )


_SPECS: tuple[ModelSpec, ...] = (
    # ---------------------------------------------------------------- image -> text
    _xattn_captioner(
        "resnet18-xattn",
        # torchvision's own download (resnet18-f37072fd.pth, same keys) is accepted in the local folder.
        HubFiles("timm/resnet18.tv_in1k", ("model.safetensors|resnet18-f37072fd.pth",), name="vision",
                 role="ImageNet ResNet-18 (torchvision IMAGENET1K_V1)"),
        full=dict(vision="resnet18"),
        tiny_vision="resnet18-tiny",
        display_name="ResNet-18 + cross-attention decoder",
        adapter="mmdemo.captioners.xattn:ResNet18XAttnCaptioner",
        licence="BSD-3-Clause (torchvision weights); ours: MIT",
        description="Frozen ResNet-18 conv trunk, 7x7x512 map as 49 tokens, 6-layer Transformer decoder.",
        report=ReportNumbers(34.2e6, 21.5e6, (22.7, 13.9, 8.7, 5.2)),
    ),
    _xattn_captioner(
        "clipb32-xattn",
        HubFiles("timm/vit_base_patch32_clip_224.openai",
                 ("open_clip_model.safetensors|open_clip_pytorch_model.bin",), name="vision",
                 role="open_clip ViT-B-32 (openai)"),
        full=dict(vision="clip-vit-b-32", clip_pretrained="openai", d_model=768),
        tiny_vision="clip-vit-tiny",
        display_name="CLIP ViT-B/32 + cross-attention decoder",
        adapter="mmdemo.captioners.xattn:ClipB32XAttnCaptioner",
        licence="MIT (OpenAI CLIP); ours: MIT",
        description="Frozen CLIP ViT-B/32 token outputs, Linear to 768, 6-layer Transformer decoder.",
        report=ReportNumbers(108e6, 21.5e6, (23.3, 15.5, 10.2, 6.2)),
    ),
    ModelSpec(
        id="qformer-bert",
        display_name="EVA-CLIP ViT-g/14 + Q-Former (BERT decoding)",
        kind="captioner",
        adapter="mmdemo.captioners.qformer:QFormerBertCaptioner",
        full_config=dict(vision="eva-vit-g-14", num_query_tokens=32, qformer_hidden=768, qformer_layers=12,
                         cross_attention_frequency=2, tokenizer="bert-base-uncased"),
        # Same classes at Shapes size; the frozen tiny ViT is pretrained by train/pretrain_tiny_eva.py (card).
        tiny_config=dict(vision="eva-vit-tiny", num_query_tokens=8, qformer_hidden=128, qformer_layers=4,
                         qformer_heads=4, qformer_intermediate=512, cross_attention_frequency=2,
                         tokenizer="shapes-wordpiece", vocab_size=400, max_text_positions=64),
        sources=(
            HubFiles("Salesforce/blip2-itm-vit-g", ("model.safetensors", "config.json"), name="vision",
                     role="EVA-CLIP ViT-g/14 vision encoder (BLIP-2 stage 1)"),
            HubFiles("google-bert/bert-base-uncased", ("vocab.txt", "tokenizer_config.json"), name="tokenizer",
                     role="BERT WordPiece vocabulary"),
            _own("qformer-bert", "model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                 name="captioner"),
        ),
        licence="MIT (BLIP-2); Apache-2.0 (BERT vocabulary); ours: MIT",
        description="Q-Former trained from scratch that decodes text itself from [DEC], queries as prefix.",
        report=ReportNumbers(1121e6, 110e6, (52.3, 36.7, 24.7, 15.8)),
        options=(
            Option(_MAX_NEW_TOKENS, "int", 30, "caption length limit in tokens", minimum=1, maximum=511),
            Option("num_beams", "int", 1, "greedy decoding only (1)", minimum=1, maximum=1),
            _BATCH_SIZE,
        ),
        demo_options={_MAX_NEW_TOKENS: dict(maximum=63)},  # the tiny model's 64 text positions
    ),
    ModelSpec(
        id="qformer-tinyllama",
        display_name="EVA-CLIP ViT-g/14 + BLIP-2 Q-Former + TinyLlama-1.1B",
        kind="captioner",
        adapter="mmdemo.captioners.qformer:QFormerLlamaCaptioner",
        full_config=dict(vision="eva-vit-g-14", num_query_tokens=32, qformer_hidden=768, llm_hidden=2048,
                         llm="TinyLlama/TinyLlama-1.1B-Chat-v1.0", prompt="Generate a simple short caption:"),
        tiny_config=dict(vision="eva-vit-tiny", num_query_tokens=8, qformer_hidden=128, qformer_layers=4,
                         qformer_heads=4, qformer_intermediate=512, cross_attention_frequency=2, llm_hidden=128,
                         llm="tiny-llama-shapes", prompt="Generate a simple short caption:"),
        sources=(
            HubFiles("Salesforce/blip2-itm-vit-g", ("model.safetensors", "config.json"), name="vision",
                     role="EVA-CLIP ViT-g/14 + pretrained Q-Former (BLIP-2 stage 1)"),
            HubFiles("TinyLlama/TinyLlama-1.1B-Chat-v1.0", ("model.safetensors", "config.json", "tokenizer.json",
                     "tokenizer_config.json"), name="language_model", role="frozen language model"),
            _own("qformer-tinyllama", "model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                 name="captioner"),
        ),
        licence="MIT (BLIP-2); Apache-2.0 (TinyLlama); ours: MIT",
        description="Fine-tuned BLIP-2 Q-Former, Linear 768->2048 into a frozen TinyLlama-1.1B-Chat.",
        report=ReportNumbers(2274e6, 188.3e6, (72.2, 50.9, 36.1, 25.9)),
        options=(
            Option(_MAX_NEW_TOKENS, "int", 30, "caption length limit in tokens", minimum=1, maximum=256),
            Option("num_beams", "int", 1, _NUM_BEAMS_HELP, minimum=1, maximum=8),
            Option("repetition_penalty", "float", 1.5, "penalty on repeating a generated token (report: 1.5)",
                   minimum=1.0, maximum=10.0),
            _BATCH_SIZE,
        ),
    ),
    # ---------------------------------------------------------------- text -> image
    _sdxl_generator(
        "sdxl-base",
        "SDXL base pipeline (fp16 files)",
        full={},
        tiny={},
        display_name="SDXL base 1.0",
        adapter="mmdemo.generators.sdxl:SDXLGenerator",
        licence="CreativeML Open RAIL++-M",
        description="Stable Diffusion XL base 1.0 through diffusers, fp16 on GPU.",
        gpu_cost=GpuCost(per_step=0.08),
    ),
    _sdxl_generator(
        "sdxl-lora",
        "SDXL base pipeline (fp16 files), shared with sdxl-base",
        full=dict(lora_rank=128),
        tiny=dict(lora_rank=8),
        more_sources=(_own("sdxl-lora", "pytorch_lora_weights.safetensors", "config.json", name="lora",
                           entry="pytorch_lora_weights.safetensors"),),
        display_name="SDXL + our Flickr8k LoRA",
        adapter="mmdemo.generators.sdxl:SDXLLoRAGenerator",
        licence="CreativeML Open RAIL++-M (base); ours: MIT",
        demo_layout=dict(pipeline="../sdxl-base", lora="pytorch_lora_weights.safetensors"),
        description="The same SDXL pipeline with our rank-128 LoRA trained on the Flickr8k LoRA split.",
        gpu_cost=GpuCost(per_step=0.09),
    ),
    ModelSpec(
        id="infinity-2b",
        display_name="Infinity-2B",
        kind="generator",
        adapter="mmdemo.generators.infinity:InfinityGenerator",
        # Keyword arguments of mmdemo.models.infinity.InfinityFamilyConfig.
        full_config=dict(
            transformer=dict(depth=32, width=2048, num_heads=16, block_chunks=8, text_channels=2048, text_maxlen=512),
            vae="d32reg", text_encoder="google/flan-t5-xl",
            budget_scales={"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}, default_budget="1M", image_size=1024,
        ),
        tiny_config=dict(
            transformer=dict(depth=4, width=128, num_heads=4, block_chunks=2, text_channels=128, text_maxlen=32,
                             pool_head_dim=32, codebook_dim=16),
            vae=dict(codebook_dim=16, base_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1, patch_size=4,
                     norm_groups=8),
            text_encoder="tiny-t5-shapes", t5=dict(d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4),
            budget_scales={"0.06M": 5, "0.25M": 5, "1M": 5}, default_budget="0.06M", image_size=32,
        ),
        sources=(
            HubFiles("FoundationVision/Infinity", ("infinity_2b_reg.pth",), name="transformer",
                     entry="infinity_2b_reg.pth", role="Infinity-2B transformer"),
            HubFiles("FoundationVision/Infinity", ("infinity_vae_d32reg.pth",), name="vae",
                     entry="infinity_vae_d32reg.pth", role="BSQ-VAE d32"),
            # flan-t5-xl's two safetensors shards are cut by size, not by encoder/decoder: both are needed.
            HubFiles("google/flan-t5-xl", ("config.json", "model.safetensors.index.json", "model-*.safetensors",
                     "spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"),
                     name="text_encoder", role="T5 text encoder"),
        ),
        licence="MIT (Infinity); Apache-2.0 (Flan-T5)",
        demo_layout=dict(transformer="transformer.safetensors", vae="vae.safetensors", text_encoder="."),
        description="Bitwise visual autoregressive model (arXiv 2412.04431), our own PyTorch inference.",
        report=ReportNumbers(settings="1024x1024 (13 scales), cfg 3, tau 0.5, top-p 0.97"),
        options=(
            _guidance(3.0, "cfg"),
            Option("tau", "float", 0.5, "sampling temperature (default 0.5)", minimum=0.01, maximum=10.0),
            Option("top_p", "float", 0.97, "nucleus sampling mass (default 0.97)", minimum=0.0, maximum=1.0),
            Option("top_k", "int", 0, "sample among the k likeliest bits (0: off)", minimum=0),
            # 0.06M is 256x256 for 1:1, 0.25M 512x512, 1M 1024x1024 (13 scales, the report's).
            Option("pixel_budget", "choice", "1M", "picture size (default 1M on a GPU, 0.06M on a CPU)",
                   choices=("0.06M", "0.25M", "0.60M", "1M"), report_default="1M", cpu_default="0.06M"),
            Option("aspect_ratio", "text", None, "width:height such as 16:9, or height/width as a number; "
                   "snaps to the nearest of Infinity's templates (default 1:1)",
                   pattern=rf"\s*{_POSITIVE}\s*(?::\s*{_POSITIVE}\s*)?"),
            Option("width", "int", None, "with height, the aspect ratio (the size follows the pixel budget)",
                   minimum=1, ui=False),
            Option("height", "int", None, "with width, the aspect ratio (the size follows the pixel budget)",
                   minimum=1, ui=False),
            Option("free_text_encoder_after_encoding", "bool", False,
                   "drop T5 from memory after each prompt (2B on a 24 GB GPU)", ui=False),
        ),
        demo_options=dict(pixel_budget=dict(choices=("0.06M", "0.25M", "1M"))),
        absent=dict(steps="it has no step count (the pixel budget sets the number of scales)"),
        gpu_cost=GpuCost(fixed=22.0),
    ),
    _our_diffusion(
        "pixel-diffusion",
        HubFiles("google-bert/bert-base-uncased", ("model.safetensors", "config.json", "vocab.txt",
                 "tokenizer_config.json", "tokenizer.json"), name="text_encoder", also=("tokenizer",),
                 role="frozen BERT text encoder"),
        steps=(20, 100),
        side=128,
        display_name="Our pixel-space diffusion",
        adapter="mmdemo.generators.pixel_diffusion:PixelDiffusionGenerator",
        # The report's UNet listing; it trained and sampled at 128 px (its sample_size=64 is metadata only).
        full_config=dict(sample_size=128, block_out_channels=(64, 128, 256, 256), layers_per_block=2,
                         down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                         cross_attention_dim=512, text_encoder="google-bert/bert-base-uncased", text_max_length=24,
                         cross_attention_mask=False, beta_schedule="linear", prediction_type="epsilon"),
        # Demo: cross-attention only at 8x8 and below (at 16x16 a CPU step costs ~2x, at 32x32 ~8x); v-prediction
        # + cosine schedule, which learned Shapes on a CPU where epsilon + linear did not (see the model card).
        tiny_config=dict(sample_size=32, block_out_channels=(32, 64, 64), layers_per_block=1,
                         down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                         cross_attention_dim=64, attention_head_dim=4, norm_num_groups=8,
                         text_encoder="tiny-bert-shapes",
                         text_encoder_config=dict(vocab_size=160, hidden_size=64, num_hidden_layers=2,
                                                  num_attention_heads=4, intermediate_size=128,
                                                  max_position_embeddings=32),
                         text_max_length=24, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
        licence="Apache-2.0 (BERT); ours: MIT",
        description="diffusers UNet2DConditionModel on 128x128 pixels, frozen BERT + trainable projection.",
        # The report's model had no condition dropout, hence no guidance.
        report=ReportNumbers(settings="DDPM, 1000 train steps, 100 sampling steps, no guidance"),
    ),
    _our_diffusion(
        "latent-diffusion",
        # The repo's main branch has only pytorch_model.bin (transformers reads it with
        # torch.load(weights_only=True)); a mirror holding model.safetensors is used as it is.
        HubFiles("openai/clip-vit-base-patch16", ("model.safetensors|pytorch_model.bin", "config.json",
                 "vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"),
                 name="text_encoder", also=("tokenizer",), role="frozen CLIP text encoder"),
        steps=(25, 1000),
        side=256,
        display_name="Our VQ-VAE latent diffusion",
        adapter="mmdemo.generators.latent_diffusion:LatentDiffusionGenerator",
        # The report's own VQ-VAE (22.0M) and latent UNet (118.5M), as its code configures them.
        full_config=dict(image_size=256, architecture="report", num_vq_embeddings=8192, latent_channels=4, downsample=8,
                         vq_block_out_channels=(64, 128, 256, 256), vq_layers_per_block=2, vq_num_heads=4,
                         unet_block_out_channels=(256, 384, 512, 768),
                         unet_layers_per_block=2, unet_attention_head_dim=16, unet_time_embedding_dim=512,
                         unet_conv_out_channels=128, cross_attention_dim=512,
                         text_encoder="openai/clip-vit-base-patch16", text_max_length=77,
                         beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="epsilon"),
        # Demo: the report's VQ-VAE and UNet at tiny size, 32x32 pixels -> 16x16x4 latents (/2: small Shapes
        # objects survive the VQ round trip), cross-attention in every layer, v-prediction + cosine schedule as
        # for the pixel demo.
        tiny_config=dict(image_size=32, architecture="report", num_vq_embeddings=256, latent_channels=4, downsample=2,
                         vq_block_out_channels=(32, 64), vq_layers_per_block=1, vq_norm_num_groups=16, vq_num_heads=4,
                         unet_block_out_channels=(32, 64, 64), unet_layers_per_block=1, unet_attention_head_dim=4,
                         unet_norm_num_groups=8, unet_time_embedding_dim=128, unet_conv_out_channels=32,
                         cross_attention_dim=64, text_encoder="tiny-clip-text-shapes",
                         text_encoder_config=dict(vocab_size=600, hidden_size=64, num_hidden_layers=2,
                                                  num_attention_heads=4, intermediate_size=128,
                                                  max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                                                  pad_token_id=1),
                         text_max_length=32, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
        licence="MIT (CLIP); ours: MIT",
        description="VQ-VAE (8192x4 codebook, /8) + latent UNet with cross-attention to CLIP text.",
        # The report sampled with cf_guidance_scale 1.0, i.e. without guidance.
        report=ReportNumbers(settings="T=1000 scaled-linear betas, 1000 DDPM sampling steps, no guidance"),
    ),
)

REGISTRY: dict[str, ModelSpec] = {spec.id: spec for spec in _SPECS}
CAPTIONER_IDS: tuple[str, ...] = tuple(s.id for s in _SPECS if s.kind == "captioner")
GENERATOR_IDS: tuple[str, ...] = tuple(s.id for s in _SPECS if s.kind == "generator")


def get_spec(model_id: str, kind: ModelKind | None = None) -> ModelSpec:
    """The spec of ``model_id``; an unknown id (or one of the wrong kind) fails loudly and lists the valid ones."""
    spec = REGISTRY.get(model_id)
    valid = CAPTIONER_IDS if kind == "captioner" else GENERATOR_IDS if kind == "generator" else tuple(REGISTRY)
    if spec is None or (kind is not None and spec.kind != kind):
        what = f"{kind} id" if kind else "model id"
        raise KeyError(f"unknown {what} {model_id!r}; valid ids: {', '.join(valid)}")
    return spec


# Auxiliary weights the app uses around the models (not models people pick).
CLIP_SCORE_SOURCE = HubFiles(
    "timm/vit_base_patch32_clip_224.openai",
    ("open_clip_model.safetensors|open_clip_pytorch_model.bin",),
    role="CLIP score judge (open_clip ViT-B-32, openai)",
    name="clip",
)
