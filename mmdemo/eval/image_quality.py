"""Image quality of generated pictures against a folder of real ones: FID and KID, with bootstrap intervals.

Both compare feature statistics of the generated pictures with those of real pictures, through torchmetrics
(``FrechetInceptionDistance``, ``KernelInceptionDistance``). The standard feature network is InceptionV3
(``features="inception"``: torchmetrics loads it through the ``torch-fidelity`` package, whose weights are
downloaded on first use); any ``torch.nn.Module`` mapping a ``uint8`` batch ``(N, 3, H, W)`` to ``(N, d)``
features can stand in (the tests use a tiny fixed network; numbers from different feature networks are not
comparable). Where the Inception weights cannot be had, the scores are ``None`` with the reason.

Intervals resample the *generated* pictures (the unit a model comparison varies) with the real statistics
fixed: FID from the resampled features' mean and covariance (torchmetrics' own Fréchet formula), KID as the
polynomial-kernel MMD of the resample (torchmetrics' ``poly_mmd``). FID is biased upwards at small n, so
compare models only at the same n.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmdemo.eval.bootstrap import bootstrap_interval

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FEATURE_SIZE = 299  # InceptionV3's input side; every picture is resized to it before feature extraction
FID_RESAMPLES = 200  # each FID resample is a matrix square root: fewer than the scalar scores' 1000


def real_images(folder: str | Path, limit: int | None = None) -> list[Path]:
    """Image files in ``folder`` (recursively, sorted), at most ``limit``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--real-images {folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ValueError(f"{folder} holds {len(files)} image(s); FID/KID need at least 2 real pictures")
    return files[:limit]


def to_uint8_batch(images: Iterable[Any], size: int = FEATURE_SIZE) -> Any:
    """PIL images or paths -> a ``uint8`` tensor ``(N, 3, size, size)`` (bicubic resize, RGB)."""
    import torch
    from PIL import Image

    arrays = []
    for image in images:
        if not isinstance(image, Image.Image):
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        arrays.append(np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC)))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _features(extractor: Any, images: Sequence[Any], batch_size: int = 32) -> Any:
    import torch

    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunks.append(extractor(to_uint8_batch(images[start : start + batch_size])).double().cpu())
    return torch.cat(chunks)


def _stats(features: Any) -> tuple[Any, Any]:
    import torch

    return features.mean(0), torch.cov(features.T)


def inception_extractor() -> tuple[Any | None, str | None]:
    """torchmetrics' InceptionV3 feature network, or ``(None, why not)``."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        return FrechetInceptionDistance(feature=2048).inception, None
    except Exception as err:  # noqa: BLE001 - missing package, weights not downloadable offline, ...
        return None, f"InceptionV3 features unavailable ({type(err).__name__}: {err})"


def fid_kid(
    generated: Sequence[Any],
    real: Sequence[Any],
    extractor: Any | None = None,
    *,
    resamples: int = FID_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """FID and KID of ``generated`` against ``real`` (PIL images or paths), with intervals.

    Args:
        generated: the model's pictures (at least 2).
        real: real pictures (at least 2).
        extractor: the feature network; ``None`` for torchmetrics' InceptionV3 (needs its weights).
        resamples: bootstrap resamples of the generated pictures (0: no intervals).

    Returns:
        ``{"fid", "kid", "fid_interval", "kid_interval", "n_generated", "n_real", "features"}``, or
        ``{"fid": None, "kid": None, "unavailable": reason}`` when no feature network can be had.
    """
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid
    from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd

    if len(generated) < 2 or len(real) < 2:
        raise ValueError(
            f"FID/KID need at least 2 pictures on each side, got {len(generated)} and {len(real)}"
        )
    features_name = "inception-v3" if extractor is None else type(extractor).__name__
    if extractor is None:
        extractor, reason = inception_extractor()
        if extractor is None:
            return {"fid": None, "kid": None, "unavailable": reason}
    extractor = extractor.eval()
    fake_batch, real_batch = to_uint8_batch(generated), to_uint8_batch(real)
    fid = FrechetInceptionDistance(feature=extractor)
    subset = min(len(generated), len(real), 1000)
    kid = KernelInceptionDistance(feature=extractor, subset_size=subset, subsets=100)
    for metric in (fid, kid):
        metric.update(real_batch, real=True)
        metric.update(fake_batch, real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # KID averages over random subsets: the same pictures, the same number
        kid_value = float(kid.compute()[0])
    result: dict[str, Any] = {
        "fid": float(fid.compute()),
        "kid": kid_value,
        "n_generated": len(generated),
        "n_real": len(real),
        "features": features_name,
    }
    fake_features, real_features = _features(extractor, generated), _features(extractor, real)
    real_mu, real_sigma = _stats(real_features)

    def resampled_fid(indices: np.ndarray) -> float:
        mu, sigma = _stats(fake_features[torch.from_numpy(indices)])
        return float(_compute_fid(real_mu, real_sigma, mu, sigma))

    def resampled_kid(indices: np.ndarray) -> float:
        return float(poly_mmd(real_features, fake_features[torch.from_numpy(indices)]))

    for key, statistic in (("fid", resampled_fid), ("kid", resampled_kid)):
        interval = bootstrap_interval(statistic, len(generated), resamples=resamples, seed=seed)
        result[f"{key}_interval"] = interval.to_json(6) if interval is not None else None
    return result
