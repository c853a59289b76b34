"""Stable Diffusion XL base 1.0 and our LoRA on it, as diffusers runs them.

* :mod:`.config`: :class:`~.config.SDXLConfig` (the registry's ``full_config`` / ``tiny_config`` for ``sdxl-base``
  and ``sdxl-lora`` are its keyword arguments), the component configs written in code, :func:`~.config.lora_config`;
* :mod:`.pipeline`: the shared ``StableDiffusionXLPipeline`` with its LoRA switch, the parameter-table network;
* :mod:`.tiny`: the demo-size pipeline; :mod:`.training`: tokenising and encoding as the pipeline does.

The adapters are :mod:`mmdemo.generators.sdxl`; sampling is diffusers' pipeline call.
"""
