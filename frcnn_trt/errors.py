"""The project's own exception types.

Every error a user can cause (a bad file, a bad value, a missing backend) is raised as a subclass of
:class:`FrcnnError` with the offending file and value in its message. The CLI prints these as one red
line and exits non-zero; anything else is a bug and shows a traceback.
"""

from __future__ import annotations


class FrcnnError(Exception):
    """Base class of every error frcnn-trt raises on purpose."""


class ConfigError(FrcnnError, ValueError):
    """A config file, key, value or override is invalid."""


class DatasetError(FrcnnError):
    """A dataset, annotation, image or cache file is missing or malformed."""


class ImageError(DatasetError):
    """An image file cannot be read or decoded."""


class CheckpointError(FrcnnError):
    """A checkpoint is missing, corrupt or belongs to another network."""


class ModelError(FrcnnError, ValueError):
    """A model was called with inputs of the wrong shape or meaning."""


class TrainingError(FrcnnError):
    """Training cannot go on (a NaN/inf loss, an inconsistent resume)."""


class ExportError(FrcnnError):
    """An export failed or its files are inconsistent."""


class BackendError(FrcnnError):
    """An inference backend cannot run here, or a model/engine cannot be loaded by it."""


class DeviceError(BackendError, TrainingError):
    """A device was asked for that this machine does not have (or an invalid device name)."""
