"""Registry adapters of ``qformer-bert`` and ``qformer-tinyllama``.

Configs, networks and decoding live in :mod:`mmdemo.models.qformer.network`; loading, option checks and the
result type come from :class:`~mmdemo.captioners.base.CaptionerAdapter`.
"""

from __future__ import annotations

from typing import Any

from mmdemo.captioners.base import CaptionerAdapter
from mmdemo.models.qformer.network import QFormerBertNetwork, QFormerLlamaNetwork

_UNSET = object()


class _QFormerCaptioner(CaptionerAdapter):
    """What both Q-Former adapters add: BLIP-2's image-text match score of each candidate caption, where the
    stage-1 checkpoint their frozen ViT comes from is on disk with its ITM head and tokenizer (full weights)."""

    _matcher: Any = _UNSET

    def image_text_matcher(self) -> Any:
        """The :class:`~mmdemo.models.qformer.itm.ImageTextMatcher`, looked up once; ``None`` without one."""
        if self._matcher is _UNSET:
            self._matcher = None
            folder = self.weights.components.get("vision")
            if self.weights.profile == "full" and folder is not None and self.network.config.freeze_vision:
                from mmdemo.models.qformer.itm import ImageTextMatcher

                self._matcher = ImageTextMatcher.from_folder(folder, device=self.device)
        return self._matcher

    def match_probabilities(self, features: Any, captions: list[str]) -> list[float] | None:
        matcher = self.image_text_matcher()
        return None if matcher is None else matcher.probabilities(features, captions)

    def to(self, device: str) -> _QFormerCaptioner:
        if self._matcher not in (_UNSET, None):
            self._matcher.to(device)
        return super().to(device)


class QFormerBertCaptioner(_QFormerCaptioner):
    """Registry adapter of ``qformer-bert``."""

    network_class = QFormerBertNetwork
    param_note = (
        "frozen EVA ViT-g/14 trunk 985.9M; trainable 186.3M: a BERT-base-size Q-Former with BLIP-2's text path "
        "(cross-attention in 6 of 12 layers +20.1M, separate query and text FFNs +56.7M), word/position "
        "embeddings 23.8M tied to the LM head, ln_vision, 32 queries. The report's 110M trainable is BERT-base "
        "itself (one FFN, no cross-attention) and 1121M is not a sum a faithful BLIP-2 Q-Former gives"
    )


class QFormerLlamaCaptioner(_QFormerCaptioner):
    """Registry adapter of ``qformer-tinyllama``."""

    network_class = QFormerLlamaNetwork
    param_note = (
        "frozen EVA ViT-g/14 trunk 985.9M + frozen TinyLlama 1100.0M; trainable 106.7M: Q-Former query path, "
        "ln_vision, 32 queries, Linear 768->2048. The report also counts the stage-1 Q-Former's text embeddings "
        "(23.8M), text FFNs (56.7M) and ITC projections (0.4M), which captioning never runs: with them ours "
        "would be 2273.6M total (report 2274M) and 187.6M trainable (report 188.3M)"
    )
