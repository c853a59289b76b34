"""The VQ-VAE's perceptual term: LPIPS on when its VGG weights load, loudly off when they do not.

The ImageNet VGG16 weights cannot be downloaded offline, so the "on" test hands torchvision randomly
initialised VGG16 weights in their place: it proves our wiring (package, frozen module, a loss that is zero
for equal images and positive otherwise), not LPIPS' calibration.
"""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from mmdemo.models.diffusion.patchgan import perceptual_loss_or_none


def test_lpips_is_on_when_the_vgg_weights_load(monkeypatch):
    random_vgg = torchvision.models.vgg16().state_dict()  # stands in for the ImageNet download
    monkeypatch.setattr(
        torchvision.models.VGG16_Weights, "get_state_dict", lambda self, *args, **kwargs: random_vgg
    )
    loss = perceptual_loss_or_none("cpu")
    assert loss is not None
    assert not any(p.requires_grad for p in loss.parameters())  # a frozen judge, never trained
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    with torch.no_grad():
        same, different = loss(images, images), loss(images, images.flip(-1))
    assert same.abs().max().item() < 1e-6
    assert different.min().item() > 0


def test_lpips_is_off_loudly_without_the_vgg_weights(monkeypatch):
    def no_network(self, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models.VGG16_Weights, "get_state_dict", no_network)
    with pytest.warns(RuntimeWarning, match="LPIPS PERCEPTUAL LOSS IS OFF.*URLError"):
        assert perceptual_loss_or_none("cpu") is None
