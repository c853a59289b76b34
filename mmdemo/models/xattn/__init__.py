"""Cross-attention Transformer-decoder captioners: config, frozen vision encoders, decoder (:mod:`.network`).

The registry's ``config`` for ``resnet18-xattn`` / ``clipb32-xattn`` are keyword arguments of
:class:`~mmdemo.models.xattn.network.XAttnConfig`; decoding (greedy, beam search) is the network's
``generate``; the adapters are :mod:`mmdemo.captioners.xattn`.
"""
