"""What ``frcnn-trt serve`` is configured with: batching, queue and upload limits (:class:`ServeSettings`).

Capacity: a request is *admitted* (counted against ``queue_size + max_batch``) before its body is read; beyond
that it gets 503 with ``Retry-After`` at once, so the service never holds more than one running batch plus
``queue_size`` waiting requests (each at most ``max_body_bytes`` on the wire and ``max_pixels`` decoded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from frcnn_trt.engines.export_format import RPN_FILE, ExportInfo
from frcnn_trt.errors import ConfigError, ExportError
from frcnn_trt.files import is_finite_number

__all__ = ["ServeSettings", "export_max_batch"]


def export_max_batch(info: ExportInfo) -> int:
    """The largest batch the export's shape profiles allow (``shape_profiles["rpn.onnx"]["image"]["max"][0]``)."""
    try:
        value = info.data["shape_profiles"][RPN_FILE]["image"]["max"][0]
    except (KeyError, IndexError, TypeError):
        raise ExportError(f"{info.directory / 'export.json'}: no shape_profiles[{RPN_FILE!r}]['image']['max'] "
                          "(the largest batch): re-export with this frcnn-trt") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExportError(f"{info.directory / 'export.json'}: the largest batch must be an integer >= 1, "
                          f"got {value!r}")
    return value


@dataclass(frozen=True)
class ServeSettings:
    """``max_batch``: images per detector call (``None``: the export's largest batch); ``batch_wait_ms``: how
    long the first request of a batch waits for others; ``queue_size``: requests waiting beyond one batch;
    ``max_body_bytes``: request body limit (413); ``max_pixels``: decoded image budget, width × height (413);
    ``retry_after_s``: the ``Retry-After`` of a 503."""

    max_batch: int | None = None
    batch_wait_ms: float = 5.0
    queue_size: int = 32
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 25_000_000
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        checks: list[tuple[str, Any, bool]] = [
            ("max_batch", self.max_batch, self.max_batch is None or _int_at_least(self.max_batch, 1)),
            ("batch_wait_ms", self.batch_wait_ms, _finite_in(self.batch_wait_ms, 0.0, 10_000.0)),
            ("queue_size", self.queue_size, _int_at_least(self.queue_size, 0)),
            ("max_body_bytes", self.max_body_bytes, _int_at_least(self.max_body_bytes, 1)),
            ("max_pixels", self.max_pixels, _int_at_least(self.max_pixels, 1)),
            ("retry_after_s", self.retry_after_s, _int_at_least(self.retry_after_s, 0)),
        ]
        for name, value, ok in checks:
            if not ok:
                raise ConfigError(f"serve setting {name}: invalid value {value!r}")

    def batch_limit(self, info: ExportInfo) -> int:
        """``max_batch``, checked against the export's largest batch (its default)."""
        largest = export_max_batch(info)
        if self.max_batch is None:
            return largest
        if self.max_batch > largest:
            raise ConfigError(f"max batch {self.max_batch} exceeds the export's largest batch {largest} "
                              f"({info.directory}): re-export with --max-batch {self.max_batch}, or serve smaller "
                              "batches")
        return self.max_batch


def _int_at_least(value: Any, lo: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lo


def _finite_in(value: Any, lo: float, hi: float) -> bool:
    return is_finite_number(value) and lo <= value <= hi
