"""Conv features of a frozen body, kept per training image (alt-opt stage 2).

In alt-opt's stage-2 RPN and stage-2 Fast R-CNN the shared conv layers are frozen, so every time an image comes
round again its conv features are the same as the last time: recomputing them is most of those stages' cost
on a CPU (the tiny net's body: ~45 ms of a ~80 ms stage-2 RPN iteration). :class:`FeatureCache` keeps each
image's features in host memory, up to a budget (``TRAIN.FEATURE_CACHE_MB``), and hands them back; the two
stage-2 stages share one cache because their conv weights are the same (the stage-1 Fast R-CNN's).

Exactness: with the cache on, a batch's features are each image's own features computed alone (batch of one),
whether they come from the cache or are computed now, so a run's result does not depend on what is cached (an
interrupted and resumed run equals an uninterrupted one). In a batch of images of different sizes the smaller
ones are zero-padded to the blob, and py-faster-rcnn's features of a padded image differ from its own near the
padded border (everywhere with the tiny net's GroupNorm, whose statistics take in the padding). By default such a
batch is computed as a whole, as without the cache, so the cache changes no result; with ``unpadded``
(``TRAIN.FEATURE_CACHE_UNPADDED``) every image uses its own features, zero-padded at the feature level, which is
how the image is seen at test time (one image, no padding) and lets the cache serve those batches too. The cache
applies only when no parameter of the body trains and the body has no layer whose output changes between calls
(dropout, batch norm in training mode).

Entries are keyed by (image file, flipped, scaled height, scaled width); :meth:`FeatureCache.bind` drops them all when
the body's weights or the pixel means change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frcnn_trt.errors import ConfigError
from frcnn_trt.model.backbones import CaffeDropout

__all__ = ["FeatureCache", "body_is_cacheable"]

_STATEFUL = (nn.modules.dropout._DropoutNd, CaffeDropout, nn.modules.batchnorm._BatchNorm)


def body_is_cacheable(body: nn.Module) -> bool:
    """True when ``body``'s output depends on its input alone: nothing trains, no dropout / live batch norm."""
    if any(p.requires_grad for p in body.parameters()):
        return False
    return not any(isinstance(m, _STATEFUL) and m.training for m in body.modules())


def _fingerprint(body: nn.Module, extra: Sequence[float]) -> str:
    h = hashlib.sha256(repr(tuple(float(v) for v in extra)).encode())
    for name, t in sorted(body.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    uncached_batches: int = 0  # mixed-size batches computed as a whole (``unpadded`` off)

    def summary(self, cache: FeatureCache) -> str:
        return (f"{len(cache)} image(s), {cache.nbytes / 2**20:.0f} MiB of {cache.budget_bytes / 2**20:.0f}; "
                f"{self.hits} hit(s), {self.misses} computed, {self.uncached_batches} mixed-size batch(es) "
                "computed whole")


class FeatureCache:
    """Per-image conv features of a frozen body, in host memory, up to ``budget_mb`` MiB (0 = off); ``unpadded``:
    images of mixed-size batches use their own features too (see the module docstring)."""

    def __init__(self, budget_mb: int, unpadded: bool = False) -> None:
        if budget_mb < 0:
            raise ConfigError(f"TRAIN.FEATURE_CACHE_MB must be ≥ 0 (0 turns the cache off), got {budget_mb}")
        self.budget_bytes = int(budget_mb) * 2**20
        self.unpadded = bool(unpadded)
        self.nbytes = 0
        self._store: dict[tuple[str, bool, int, int], Tensor] = {}
        self._fingerprint: str | None = None
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._store)

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def clear(self) -> None:
        self._store.clear()
        self.nbytes = 0

    def bind(self, body: nn.Module, pixel_means: Sequence[float]) -> None:
        """Use the cache for ``body`` (its current weights): entries made with other weights are dropped."""
        fp = _fingerprint(body, pixel_means)
        if fp != self._fingerprint:
            self.clear()
            self._fingerprint = fp
        self.stats = CacheStats()

    @torch.no_grad()
    def features(self, body: nn.Module, images: Tensor, im_info: Tensor, paths: Sequence[str] | None,
                 flipped: Sequence[bool] | None) -> Tensor:
        """``body(images)``, from per-image features where the batch allows it (see the module docstring);
        ``paths`` / ``flipped``: each image's file and whether it is the mirrored one (the cache key)."""
        n, _, height, width = images.shape
        sizes = im_info[:, :2].round().to(torch.long).tolist()
        padded = any(h != height or w != width for h, w in sizes)
        if paths is None or flipped is None or (padded and not self.unpadded):
            self.stats.uncached_batches += 1
            return body(images)
        out: list[Tensor] = []
        for i, (h, w) in enumerate(sizes):  # at most IMS_PER_BATCH images
            key = (str(paths[i]), bool(flipped[i]), h, w)
            feat = self._store.get(key)
            if feat is None:
                self.stats.misses += 1
                feat = body(images[i:i + 1, :, :h, :w])
                size = feat.numel() * feat.element_size()
                if self.nbytes + size <= self.budget_bytes:
                    self._store[key] = feat.to("cpu", copy=True)
                    self.nbytes += size
            else:
                self.stats.hits += 1
                feat = feat.to(images.device, non_blocking=True)
            out.append(feat)
        if n == 1:
            return out[0]
        # the blob's feature size is the largest image's (the conv arithmetic is monotone in the input size)
        fh, fw = max(f.shape[-2] for f in out), max(f.shape[-1] for f in out)
        return torch.cat([F.pad(f, (0, fw - f.shape[-1], 0, fh - f.shape[-2])) for f in out])
