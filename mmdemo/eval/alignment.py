"""How well a generated image matches its prompt, for the Text → Image panels.

* Full weights: **CLIP score**, ``100 * max(cos(image, text), 0)`` with open_clip ViT-B-32 (openai),
  the torchmetrics convention (Hessel et al. 2021 use a weight of 2.5 instead of 100). OpenAI's CLIP
  was trained with QuickGELU (``x * sigmoid(1.702 x)``), so the network is built from open_clip's
  ``ViT-B-32-quickgelu`` configuration; plain ``ViT-B-32`` (GELU) would run the same weights through
  a different activation and give a slightly wrong score.
* Demo weights: **ShapesEval**, the fraction of the prompt's colour / shape / position that a
  classical judge finds in the image (the tiny models only know Shapes prompts, where CLIP says little).

When no judge is available (CLIP weights unresolved, or a demo prompt that names no single Shapes
object) the score is ``None`` and the name says why.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from mmdemo.registry import CLIP_SCORE_SOURCE
from mmdemo.weights import WeightsUnavailable, fetch_source

log = logging.getLogger(__name__)

# OpenAI's weights need QuickGELU; open_clip turns it on for the "openai" tag or a "-quickgelu" config only.
CLIP_MODEL_NAME = "ViT-B-32-quickgelu"
# The weights files the score's source may hold, safest first; never a config or any other open_clip_* file.
CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def clip_weights_file(folder: Path) -> Path:
    """The CLIP weights file in ``folder``: safetensors when present, else the pickle (read with weights_only)."""
    for name in CLIP_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"none of {', '.join(CLIP_WEIGHT_FILES)} in {folder}")


def build_clip(weights_file: Path | None) -> tuple[Any, Any, Any]:
    """(model, preprocess, tokenizer) of OpenAI's ViT-B-32 with QuickGELU; weights loaded strictly and safely."""
    import open_clip

    from mmdemo.weights import load_state_dict

    model, _, preprocess = open_clip.create_model_and_transforms(CLIP_MODEL_NAME, pretrained=None)
    if weights_file is not None:
        model.load_state_dict(load_state_dict(weights_file), strict=True)
    return model.eval(), preprocess, open_clip.get_tokenizer(CLIP_MODEL_NAME)


class ClipScorer:
    """open_clip ViT-B-32 loaded once, on first use, from the local folder / HF cache / Hub."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any, Any] | None = None
        self._unavailable: str | None = None

    def _load(self) -> tuple[Any, Any, Any] | None:
        with self._lock:
            if self._loaded is None and self._unavailable is None:
                try:
                    folder = fetch_source(None, CLIP_SCORE_SOURCE)
                except WeightsUnavailable as err:
                    self._unavailable = "CLIP weights unavailable: " + "; ".join(err.looked_in)
                    return None
                import torch

                try:
                    model, preprocess, tokenizer = build_clip(clip_weights_file(folder))
                except (OSError, ValueError, RuntimeError) as err:  # a corrupt or foreign file: say so, once
                    self._unavailable = f"CLIP weights in {folder} unusable: {err}"
                    log.warning(self._unavailable)
                    return None
                device = "cuda" if torch.cuda.is_available() else "cpu"
                self._loaded = (model.to(device), preprocess, tokenizer)
            return self._loaded

    def __call__(self, image: Any, prompt: str) -> float | None:
        loaded = self._load()
        if loaded is None:
            return None
        import torch

        model, preprocess, tokenizer = loaded
        device = next(model.parameters()).device
        with torch.no_grad():
            image_features = model.encode_image(preprocess(image).unsqueeze(0).to(device))
            text_features = model.encode_text(tokenizer([prompt]).to(device))
            cosine = torch.nn.functional.cosine_similarity(image_features, text_features).item()
        return 100.0 * max(cosine, 0.0)

    @property
    def unavailable_reason(self) -> str | None:
        return self._unavailable


_CLIP = ClipScorer()


def prepare_clip_score() -> bool:
    """Fetch and build the CLIP judge now (before a ZeroGPU window opens); whether it is available."""
    return _CLIP._load() is not None


def shapes_eval_score(image: Any, prompt: str) -> tuple[float | None, str]:
    """Fraction of the attributes the prompt names (colour, shape, position) that the judge finds."""
    from mmdemo.eval.shapes_eval import judge

    verdict = judge(image, prompt)
    named = [k for k in ("color", "shape", "position") if verdict.expected.get(k)]
    if not named:
        return None, "ShapesEval (the prompt names no Shapes colour, shape or position)"
    correct = sum(getattr(verdict, f"{k}_ok") for k in named)
    return correct / len(named), f"ShapesEval ({', '.join(named)})"


def score_alignment(image: Any, prompt: str, weights_profile: str) -> tuple[float | None, str]:
    """(score, name of the judge) for one generated image."""
    if weights_profile == "demo":
        return shapes_eval_score(image, prompt)
    score = _CLIP(image, prompt)
    if score is None:
        return None, "CLIP score unavailable"
    return score, "CLIP score"
