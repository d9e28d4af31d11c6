"""Aff-Wild2 valence-arousal annotation files: ``valence,arousal`` then one ``v,a`` row per video frame.

Row i (1-based, after the header) belongs to frame i of the subject. ``-5`` marks a frame nobody
annotated; such rows stay in place (dropping them would shift every later frame against the video and
audio) and are flagged in ``Annotations.valid`` so that no loss or metric ever sees them.

Parsing has two paths. The fast one (polars' CSV reader behind a byte-level guard) accepts only files it
is sure about; anything it does not accept is re-read by the exact line-by-line parser, which is the
definition of a valid file and names the first bad line.
"""

from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from abaw.errors import AbawError

HEADER = "valence,arousal"
NOT_ANNOTATED = -5.0

# One value: an optionally signed decimal with optional exponent, spaces around it tolerated.
_NUMBER = re.compile(r"[ \t]*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[ \t]*")
# Bytes the fast path lets through untouched: digits, sign, point, exponent, comma, line ends. Anything
# else (spaces, letters of "nan"/"inf", quotes, NUL...) sends the file to the exact parser.
_FAST_BYTES = b"0123456789.,+-eE\r\n"
_BOM = b"\xef\xbb\xbf"


class AnnotationError(ValueError, AbawError):
    """An annotation file that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class Annotations:
    """Per-frame labels of one subject.

    ``values`` keeps the file's numbers, -5 included, so row i is frame i; ``valid`` is False where the
    frame is not annotated (both values -5). Always select or weight by ``valid``.
    """

    values: np.ndarray  # float32 [N, 2]: valence, arousal
    valid: np.ndarray  # bool [N]
    path: str = ""
    notes: tuple[str, ...] = field(default=())  # harmless format quirks (CRLF, trailing blank line, BOM)

    def __len__(self) -> int:
        return len(self.valid)

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())


def read_annotations(path: str | os.PathLike) -> Annotations:
    """Read one annotation file; raise ``AnnotationError`` naming the file and line of the first problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read: {e.strerror or e}") from e
    return parse_annotations(data, str(path))


def parse_annotations(data: bytes, name: str = "<annotations>") -> Annotations:
    """Parse the bytes of an annotation file (``name`` is used in messages)."""
    notes = []
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
        notes.append("UTF-8 byte-order mark")
    if not data.strip():
        raise AnnotationError(f"{name}:1: empty file, expected the header {HEADER!r}")
    header, _, body = data.partition(b"\n")
    header_text = header.decode("utf-8", errors="replace").strip()
    if header_text != HEADER:
        raise AnnotationError(f"{name}:1: header must be {HEADER!r}, got {header_text!r}")
    if b"\r\n" in data:
        notes.append("CRLF line ends")
    # Trailing blank lines are harmless (editors add them); blank lines between rows are not.
    stripped = body.rstrip()
    if body[len(stripped) :].count(b"\n") > 1:
        notes.append("trailing blank line")
    if not stripped:
        raise AnnotationError(f"{name}:2: no data rows after the header")
    values = _parse_fast(stripped)
    if values is None:
        values = _parse_exact(stripped, name)
    valid = _check_values(values, stripped, name)
    return Annotations(values.astype(np.float32), valid, name, tuple(notes))


def _parse_fast(body: bytes) -> np.ndarray | None:
    """float64[N, 2] when polars reads every row as two numbers, else None (let the exact parser look)."""
    if body.translate(None, _FAST_BYTES):
        return None
    import polars as pl

    n_rows = body.count(b"\n") + 1
    if body.count(b",") != n_rows:  # polars forgives a trailing comma on the last line; we do not
        return None
    try:
        df = pl.read_csv(
            io.BytesIO(body),
            has_header=False,
            schema={"valence": pl.Float64, "arousal": pl.Float64},
            quote_char=None,
            truncate_ragged_lines=False,
        )
    except Exception:  # polars' own messages lack our line numbers; the exact parser finds the line
        return None
    # Blank lines and short rows come back as nulls; a row count that differs means polars skipped one.
    if df.height != n_rows or df.null_count().sum_horizontal().item() != 0:
        return None
    return df.to_numpy().astype(np.float64, copy=False)


def _parse_exact(body: bytes, name: str) -> np.ndarray:
    """Line by line: every row must be exactly two numbers. The first bad row is named."""
    out = []
    bad: list[str] = []
    for i, raw in enumerate(body.split(b"\n")):
        lineno = i + 2  # line 1 is the header
        try:
            line = raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError:
            bad.append(f"{name}:{lineno}: not valid UTF-8 text (got {raw[:60]!r})")
            continue
        fields = line.split(",")
        if not line.strip():
            bad.append(f"{name}:{lineno}: blank line inside the data (every frame needs a row)")
        elif len(fields) != 2:
            bad.append(f"{name}:{lineno}: expected 2 comma-separated values, got {len(fields)} in {line!r}")
        elif not all(_NUMBER.fullmatch(f) for f in fields):
            bad.append(f"{name}:{lineno}: not a finite number in {line!r}")
        else:
            out.append((float(fields[0]), float(fields[1])))
            continue
        out.append((math.nan, math.nan))
    if bad:
        more = f" (and {len(bad) - 1} more bad line(s))" if len(bad) > 1 else ""
        raise AnnotationError(bad[0] + more)
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def _check_values(values: np.ndarray, body: bytes, name: str) -> np.ndarray:
    """Every value in [-1, 1] or exactly -5; a row is either fully annotated or fully -5."""
    missing = values == NOT_ANNOTATED
    ok = (np.isfinite(values) & (np.abs(values) <= 1.0)) | missing
    half = missing[:, 0] != missing[:, 1]
    bad_rows = np.flatnonzero(~ok.all(axis=1) | half)
    if len(bad_rows):
        r = int(bad_rows[0])
        line = _line(body, r)
        if half[r]:
            what = "only one of valence/arousal is -5 (not annotated); both or neither must be"
        else:
            what = "value outside [-1, 1] (and not -5, the not-annotated mark)"
        more = f" (and {len(bad_rows) - 1} more bad line(s))" if len(bad_rows) > 1 else ""
        raise AnnotationError(f"{name}:{r + 2}: {what}: {line!r}{more}")
    return ~missing[:, 0]


def _line(body: bytes, row: int) -> str:
    start = 0
    for _ in range(row):
        start = body.index(b"\n", start) + 1
    end = body.find(b"\n", start)
    return body[start : end if end >= 0 else None].decode("utf-8", errors="replace").rstrip("\r")


def false_runs(mask: np.ndarray) -> list[list[int]]:
    """Half-open ``[start, end)`` runs where ``mask`` is False (missing crops, unannotated frames)."""
    m = np.asarray(mask, dtype=bool)
    if m.size == 0 or m.all():
        return []
    edges = np.diff(np.concatenate(([1], m.astype(np.int8), [1])))
    starts = np.flatnonzero(edges == -1)
    ends = np.flatnonzero(edges == 1)
    return [[int(s), int(e)] for s, e in zip(starts, ends, strict=True)]
