"""Registry adapters of ``resnet18-xattn`` and ``clipb32-xattn``.

Config, vision encoders, decoder and decoding live in :mod:`mmdemo.models.xattn.network`; loading, option
checks and the result type come from :class:`~mmdemo.captioners.base.CaptionerAdapter`.
"""

from __future__ import annotations

from mmdemo.captioners.base import CaptionerAdapter
from mmdemo.models.xattn.network import XAttnCaptionNetwork

_NOTE = (
    "decoder as stated (6 layers, FF 2048, 8 heads) is {decoder:.1f}M at width {d}; + word embedding, "
    "Linear to vocab (2096 words, report split, freq>=2), Linear {c}->{d} and 49 image positions = our "
    "trainable; the report's 21.5M trainable cannot come from the stated decoder; frozen {enc} {frozen:.1f}M"
)


class XAttnCaptioner(CaptionerAdapter):
    """Registry adapter for both ``resnet18-xattn`` and ``clipb32-xattn`` (the config picks the encoder)."""

    network_class = XAttnCaptionNetwork
    param_note = _NOTE.format(decoder=25.2, d=512, c=512, enc="ResNet-18 trunk", frozen=11.2)


class ResNet18XAttnCaptioner(XAttnCaptioner):
    param_note = _NOTE.format(decoder=25.2, d=512, c=512, enc="ResNet-18 trunk", frozen=11.2)


class ClipB32XAttnCaptioner(XAttnCaptioner):
    param_note = _NOTE.format(
        decoder=47.3, d=768, c=768, enc="CLIP ViT-B/32 visual (incl. unused proj)", frozen=87.8
    )
