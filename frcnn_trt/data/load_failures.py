"""Images that fail to load *during* training (changed or deleted after the roidb's image check).

Such an image never ends a run with a worker's traceback: the loader skips it (its place in the batch goes to
the next readable entry of the roidb), names the file in a warning and marks it on a :class:`FailureBoard`, a
flag per image file in shared memory that the main process and every ``DataLoader`` worker see. A marked file is
not tried again. When more than ``cap`` files have failed (default ``max(10, 1 %`` of the images``)``) the data
has gone bad: the batch sampler, which runs in the main process, stops the run with a
:class:`~frcnn_trt.errors.DatasetError` naming the first files.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from frcnn_trt.errors import DatasetError

__all__ = ["FailureBoard", "default_cap"]

logger = logging.getLogger(__name__)


def default_cap(num_files: int) -> int:
    """Failed files tolerated before a run is stopped: ``max(10, 1 %`` of the files``)``."""
    return max(10, math.ceil(0.01 * num_files))


class FailureBoard:
    """Which image files of a roidb have failed to load, shared across ``DataLoader`` workers.

    ``paths[i]`` is the image of roidb entry ``i`` (an image and its flipped copy share one flag).
    """

    def __init__(self, paths: Sequence[str | Path], cap: int | None = None) -> None:
        names = [str(p) for p in paths]
        self.files = sorted(set(names))
        index = {f: i for i, f in enumerate(self.files)}
        self.entry_file = np.asarray([index[n] for n in names], dtype=np.int64)
        self.cap = default_cap(len(self.files)) if cap is None else int(cap)
        # shared memory: a worker's mark is seen by the main process and by the other workers
        self.flags = torch.zeros(max(1, len(self.files)), dtype=torch.uint8).share_memory_()

    def is_bad(self, entry: int) -> bool:
        return bool(self.flags[int(self.entry_file[entry])])

    def mark(self, entry: int, reason: str) -> None:
        """Record that entry ``entry``'s image failed (once per file), with a warning naming it."""
        f = int(self.entry_file[entry])
        if not self.flags[f]:
            self.flags[f] = 1
            logger.warning("skipped: %s: %s (failed during training; the next readable image takes its place)",
                           self.files[f], reason)

    def failed_files(self) -> list[str]:
        return [self.files[i] for i in torch.nonzero(self.flags).flatten().tolist()]

    def count(self) -> int:
        return int(self.flags.sum())

    def check(self) -> None:
        """:class:`DatasetError` when more than ``cap`` files have failed."""
        n = self.count()
        if n > self.cap:
            first = ", ".join(self.failed_files()[:5])
            raise DatasetError(
                f"{n} of {len(self.files)} training images failed to load during training, more than the cap of "
                f"{self.cap}: the data changed after the roidb was built (first: {first}); fix or restore the "
                f"files and start again (the image check runs at the start)"
            )
