"""Pieces shared by our two diffusion generators (pixel and VQ-VAE latent).

* :mod:`.text`: the frozen text encoders (BERT, CLIP text tower) and the tiny Shapes tokenizers.
* :mod:`.sampling`: noise schedules, the "report" and "fast" presets, classifier-free guidance.
* :mod:`.patchgan`: the PatchGAN discriminator and the VQ-VAE losses diffusers does not ship.
* :mod:`.training`: EMA, loss-curve and sample-grid plots shared by the training scripts.
"""
