"""mmdemo: try and compare image-captioning and text-to-image models.

Two entry points create any registered model by id::

    import mmdemo
    captioner = mmdemo.load_captioner("resnet18-xattn", profile="demo")
    captioner.caption([image])[0].caption           # -> "a small red circle on the left ..."
    generator = mmdemo.load_generator("pixel-diffusion", profile="demo")
    generator.generate("a red circle", seed=0).image  # -> PIL.Image (also .settings, .notices, .seconds)

An unknown id fails and lists the valid ones; weights that cannot be found raise
:class:`WeightsUnavailable`, whose message says where we looked and what to do.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING

from mmdemo.registry import CAPTIONER_IDS, GENERATOR_IDS, REGISTRY, ModelSpec, get_spec
from mmdemo.weights import Profile, WeightsUnavailable, resolve

if TYPE_CHECKING:
    from mmdemo.interfaces import Captioner, Generator
    from mmdemo.runtime import SharedParts

__all__ = [
    "CAPTIONER_IDS",
    "GENERATOR_IDS",
    "REGISTRY",
    "WeightsUnavailable",
    "adapter_class",
    "get_spec",
    "load_captioner",
    "load_generator",
]


def adapter_class(spec: ModelSpec) -> type:
    """The class implementing ``spec``'s interface, imported on first use (heavy libraries stay unloaded)."""
    module_name, _, class_name = spec.adapter.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_captioner(model_id: str, profile: Profile = "auto", *, device: str | None = None) -> Captioner:
    """Build captioner ``model_id`` with the weights ``profile`` resolves to."""
    spec = get_spec(model_id, "captioner")
    cls = adapter_class(spec)
    return cls.load(spec, resolve(model_id, profile), device=device)


def load_generator(
    model_id: str, profile: Profile = "auto", *, device: str | None = None, shared: SharedParts | None = None
) -> Generator:
    """Build generator ``model_id`` with the weights ``profile`` resolves to.

    ``shared``: parts several models use (a :class:`~mmdemo.runtime.SharedParts`, e.g. a
    :class:`~mmdemo.runtime.ModelManager`'s), loaded once; adapters that have none ignore it.
    """
    spec = get_spec(model_id, "generator")
    cls = adapter_class(spec)
    extra = (
        {"shared": shared}
        if shared is not None and "shared" in inspect.signature(cls.load).parameters
        else {}
    )
    return cls.load(spec, resolve(model_id, profile), device=device, **extra)
