"""User errors of ``abaw video`` (each names the file, run or setting at fault)."""

from __future__ import annotations

from abaw.errors import AbawError


class VideoError(AbawError):
    """A video that cannot be read, or one in which no face is ever found."""


class DetectorMissingError(AbawError):
    """The face detector's runtime or model files are not installed."""


class RunFeaturesError(AbawError):
    """Runs without a usable ``features.json``, or runs trained on different features."""
