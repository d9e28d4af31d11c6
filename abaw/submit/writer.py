"""Write the one ABAW VA prediction file: ``image_location,valence,arousal``, one row per frame
``<video>/<%05d>.jpg,v,a``, frames 1..N, videos in release-list order.

The text is built per video by polars (vectorised string columns and its float formatter, which gives
the same digits as printf ``%.Nf``), never a Python loop per row: a 1 M-row file takes about a second.
This module knows only the format; the independent check is abaw.submit.validate.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from abaw.errors import AbawError
from abaw.submit.config import float_decimals
from abaw.utils import atomic_path, file_digest

HEADER = "image_location,valence,arousal"
# A name ends up between a line start and "/": anything that would change the row's columns or
# its path (separator, slash, quote, line break) cannot be written.
_BAD_NAME = re.compile(r'[,/\\"\r\n]|^\s|\s$')


class SubmissionWriteError(ValueError, AbawError):
    """Predictions that cannot be written as asked (names the video and what is wrong)."""


@dataclass
class Adjustment:
    """One video whose prediction length differed from the required row count."""

    subject: str
    predicted: int
    expected: int
    action: str  # "padded" (last value repeated) | "truncated"

    def describe(self) -> str:
        diff = abs(self.expected - self.predicted)
        how = "repeating the last value" if self.action == "padded" else "dropping the tail"
        return f"{self.subject}: predicted {self.predicted} frames, need {self.expected}: {self.action} {diff} ({how})"


@dataclass
class WriteReport:
    path: Path
    rows: int  # data rows, header excluded
    rows_per_subject: dict[str, int]
    adjusted: list[Adjustment] = field(default_factory=list)
    clipped: int = 0  # values moved into [-1, 1]
    ignored: list[str] = field(default_factory=list)  # predicted videos that the order does not list
    digest: str = ""  # sha256 of the written file
    bytes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d

    def summary_lines(self) -> list[str]:
        lines = [f"wrote {self.path} ({self.rows:,} rows, {len(self.rows_per_subject)} videos, "
                 f"{self.bytes / 2**20:.1f} MiB, {self.seconds:.2f} s)"]
        if self.clipped:
            lines.append(f"clipped {self.clipped:,} values into [-1, 1]")
        for adj in self.adjusted:
            lines.append("length mismatch: " + adj.describe())
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)} predicted video(s) not in the release list: "
                         + ", ".join(self.ignored[:10]) + (" ..." if len(self.ignored) > 10 else ""))
        return lines


def _check_inputs(predictions: Mapping[str, np.ndarray], order: Sequence[str], counts: Mapping[str, int]) -> None:
    seen: set[str] = set()
    dups = [s for s in order if s in seen or seen.add(s)]
    if dups:
        raise SubmissionWriteError(f"the release order lists video(s) twice: {sorted(set(dups))}")
    bad = [s for s in order if not s or _BAD_NAME.search(s)]
    if bad:
        raise SubmissionWriteError(f"video name(s) that cannot appear in image_location: {bad[:10]}")
    missing = [s for s in order if s not in predictions]
    if missing:
        raise SubmissionWriteError(
            f"no predictions for {len(missing)} video(s) of the release list: {missing[:10]}"
            + (" ..." if len(missing) > 10 else "")
        )
    no_count = [s for s in order if s not in counts]
    if no_count:
        raise SubmissionWriteError(f"no row count for video(s) {no_count[:10]}: pass the sample-file count "
                                   "(or the container's frame count) for every video")
    for s in order:
        n = counts[s]
        if int(n) != n or n < 1:
            raise SubmissionWriteError(f"{s}: row count must be a positive integer, got {n!r}")


def _fit(subject: str, values: np.ndarray, n: int) -> tuple[np.ndarray, Adjustment | None, int]:
    """Values as float64 [n, 2] in [-1, 1]: pad/truncate to n, clip; reject NaN/inf."""
    arr = np.asarray(values)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise SubmissionWriteError(f"{subject}: predictions must have shape [N, 2] (valence, arousal), "
                                   f"got {arr.shape}")
    if len(arr) == 0:
        raise SubmissionWriteError(f"{subject}: no predicted frames (nothing to pad from)")
    arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        frame = int(np.flatnonzero(~finite.all(axis=1))[0]) + 1
        # A NaN means a bug upstream; writing a made-up value would hide it from the leaderboard.
        raise SubmissionWriteError(f"{subject}: non-finite prediction (NaN/inf) at frame {frame} "
                                   f"({int((~finite).sum())} values in all)")
    adj = None
    if len(arr) < n:
        adj = Adjustment(subject, len(arr), n, "padded")
        arr = np.concatenate([arr, np.repeat(arr[-1:], n - len(arr), axis=0)])
    elif len(arr) > n:
        adj = Adjustment(subject, len(arr), n, "truncated")
        arr = arr[:n]
    out = np.clip(arr, -1.0, 1.0)
    clipped = int(np.count_nonzero(out != arr))
    # -0.0 would print as "-0.000000"; +0.0 turns it into the zero everyone expects.
    return out + 0.0, adj, clipped


def _subject_rows(subject: str, values: np.ndarray) -> pl.DataFrame:
    n = len(values)
    location = pl.concat_str(
        [pl.lit(subject + "/"), pl.int_range(1, n + 1, eager=True).cast(pl.String).str.zfill(5), pl.lit(".jpg")]
    )
    return pl.select(
        location.alias("image_location"),
        pl.Series("valence", values[:, 0]),
        pl.Series("arousal", values[:, 1]),
    )


def write_submission(
    path: str | Path,
    predictions: Mapping[str, np.ndarray],
    order: Sequence[str],
    counts: Mapping[str, int],
    float_format: str = "%.6f",
) -> WriteReport:
    """Write the prediction file atomically and say what was padded, truncated, clipped or ignored.

    ``predictions[s]`` is [N_s, 2] (valence, arousal) on the frame axis; ``order`` the release list;
    ``counts[s]`` the required rows (the sample file's count, or the container's frame count).
    Raises SubmissionWriteError for a missing video or count, a bad name, a bad shape, or NaN/inf.
    """
    t0 = time.perf_counter()
    path = Path(path)
    decimals = float_decimals(float_format)
    _check_inputs(predictions, order, counts)
    report = WriteReport(path=path, rows=0, rows_per_subject={})
    listed = set(order)
    report.ignored = [s for s in predictions if s not in listed]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write((HEADER + "\n").encode())
        for subject in order:
            values, adj, clipped = _fit(subject, predictions[subject], int(counts[subject]))
            if adj is not None:
                report.adjusted.append(adj)
            report.clipped += clipped
            _subject_rows(subject, values).write_csv(
                f, include_header=False, float_precision=decimals, float_scientific=False, line_terminator="\n"
            )
            report.rows_per_subject[subject] = len(values)
            report.rows += len(values)
    report.bytes = path.stat().st_size
    report.digest = file_digest(path, n=64)
    report.seconds = time.perf_counter() - t0
    return report
