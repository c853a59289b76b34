"""BLIP-2 Q-Former family: configs, networks, official-weight mapping and demo tokenizers (:mod:`.network`).

The registry's ``config`` for ``qformer-bert`` / ``qformer-tinyllama`` are keyword arguments of
:class:`~mmdemo.models.qformer.network.QFormerBertConfig` / ``QFormerLlamaConfig``; decoding is the networks'
``generate`` method; the adapters are :mod:`mmdemo.captioners.qformer`.
"""
