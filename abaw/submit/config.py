"""Prediction and submission settings."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# The writer formats with a fixed number of decimals (never exponent notation), so the only
# printf formats it can honour are of the form %.Nf.
FLOAT_FORMAT_RE = re.compile(r"^%\.(\d{1,2})f$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class SubmitConfig:
    name: str = ""  # submission name; empty = "<model variant>-<UTC time>"
    runs: list[str] = field(default_factory=list)  # run folders to ensemble; empty = latest run of the model
    split: str = "test"
    float_format: str = "%.6f"  # %.Nf only: fixed decimals, as the teams that placed wrote them
    out_dir: str = "submissions"  # relative to the repository root unless absolute
    file_name: str = "predictions.txt"  # the prediction file inside submissions/<name>/ and its zip
    truth_dir: str = ""  # ground truth for `abaw score`/demo scoring; empty = <data_root>/ground_truth/Test_Set
    max_print: int = 20  # validator printout: at most this many errors of each kind

    def validate(self) -> None:
        """Raise ValueError naming the field, so a bad value fails when the config is loaded."""
        if not FLOAT_FORMAT_RE.match(self.float_format):
            raise ValueError(f"submit.float_format must look like %.6f (fixed decimals), got {self.float_format!r}")
        if self.name:
            check_name(self.name)
        if not self.file_name or "/" in self.file_name or self.file_name.startswith("."):
            raise ValueError(f"submit.file_name {self.file_name!r} must be a plain, visible file name")
        if self.max_print < 1:
            raise ValueError(f"submit.max_print must be >= 1, got {self.max_print}")


def float_decimals(float_format: str) -> int:
    """``"%.6f"`` -> 6."""
    m = FLOAT_FORMAT_RE.match(float_format)
    if not m:
        raise ValueError(f"float format must look like %.6f, got {float_format!r}")
    return int(m.group(1))


def check_name(name: str) -> str:
    """A submission name becomes a folder and a zip name: letters, digits and . _ + - only."""
    if not _NAME_RE.match(name) or len(name) > 100:
        raise ValueError(f"submission name {name!r}: use up to 100 letters, digits and . _ + - "
                         "(starting with a letter or digit)")
    return name
