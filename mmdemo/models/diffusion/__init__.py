"""Our two diffusion generators (pixel and VQ-VAE latent) and what they share.

* :mod:`.pixel` / :mod:`.latent`: each model's config, networks and checkpoint reading.
* :mod:`.text_to_image`: their common model base (frozen text encoder, strict reading) and guided sampler.
* :mod:`.text`: the frozen text encoders (BERT, CLIP text tower) and the tiny Shapes tokenizers.
* :mod:`.sampling`: noise schedules, the "report" and "fast" presets, classifier-free guidance.
* :mod:`.patchgan`: the PatchGAN discriminators (pix2pix's and the report's) and the VQ-VAE and GAN losses
  diffusers does not ship.
* :mod:`.report_nets`: the report's own VQ-VAE and latent UNet (the latent model's full size).
* :mod:`.training`: data, batches (shuffled epochs or i.i.d.), optimiser and schedule by name, EMA, plots and
  the denoisers' shared training loop.
"""
