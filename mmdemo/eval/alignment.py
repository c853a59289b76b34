"""How well a generated image matches its prompt, for the Text → Image panels.

* Full weights: **CLIP score**, ``100 * max(cos(image, text), 0)`` with open_clip ViT-B-32 (openai),
  the torchmetrics convention (Hessel et al. 2021 use a weight of 2.5 instead of 100).
* Demo weights: **ShapesEval**, the fraction of the prompt's colour / shape / position that a
  classical judge finds in the image (the tiny models only know Shapes prompts, where CLIP says little).

When no judge is available (CLIP weights unresolved, or a demo prompt that names no single Shapes
object) the score is ``None`` and the name says why.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from mmdemo.registry import CLIP_SCORE_SOURCE
from mmdemo.weights import checkpoint_root, find_source

log = logging.getLogger(__name__)


class ClipScorer:
    """open_clip ViT-B-32 loaded once, on first use, from the local folder / HF cache / Hub."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any, Any] | None = None
        self._unavailable: str | None = None

    def _load(self) -> tuple[Any, Any, Any] | None:
        with self._lock:
            if self._loaded is None and self._unavailable is None:
                folder, _, looked = find_source(
                    CLIP_SCORE_SOURCE, checkpoint_root() / CLIP_SCORE_SOURCE.repo_id, download=True
                )
                if folder is None:
                    self._unavailable = "CLIP weights unavailable: " + "; ".join(looked)
                    return None
                import open_clip
                import torch

                files = sorted(folder.glob("open_clip_*"), key=lambda p: p.suffix != ".safetensors")
                model, _, preprocess = open_clip.create_model_and_transforms(
                    "ViT-B-32", pretrained=str(files[0])
                )
                device = "cuda" if torch.cuda.is_available() else "cpu"
                self._loaded = (model.eval().to(device), preprocess, open_clip.get_tokenizer("ViT-B-32"))
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
