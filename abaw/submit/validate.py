"""An independent check of an ABAW VA prediction file (or a .zip holding it).

Independent on purpose: it shares no code with the writer (or with abaw.data's readers) so that a bug
there cannot hide here. It streams the file in chunks of whole lines and checks each chunk with NumPy
over the raw bytes (newline, comma and slash positions; digits and numbers gathered into fixed-width
arrays), so 3 M rows take a few seconds and memory stays flat. Every error found is counted; the first
``max_keep`` of each kind are kept with their line number (the header is line 1).

The sample file is read with this same parser: it is a prediction file too, and its blocks give the
rows each video must have. The release list gives the order (the sample's order when there is none).
"""

from __future__ import annotations

import argparse
import contextlib
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from abaw.errors import AbawError

HEADER = b"image_location,valence,arousal"
SWAPPED = b"image_location,arousal,valence"

# Printing order of error kinds, roughly from "the file cannot be read" to "a value is off".
KINDS = (
    "file", "header", "line_ending", "blank_line", "columns", "location", "unknown_video",
    "missing_video", "order", "repeated_block", "frame", "duplicate", "count", "number", "not_finite", "range",
)  # fmt: skip
# Errors that make a sample file's row counts untrustworthy (its header, values and columns do not).
_SAMPLE_FATAL = {"file", "location", "repeated_block", "frame", "duplicate"}

_CHUNK = 8 << 20  # bytes per read: ~250 k rows, a few tens of MB of temporaries
_MAX_NAME = 255
_MAX_DIGITS = 9  # frame numbers below 10^9: fits the 2^31 run key below
_MAX_NUMBER = 40
_PAD = 256  # zero bytes on both sides of a chunk, so every fixed-width gather stays inside it
_RUN_KEY = np.int64(1) << 31
_NUMBER_BYTES = np.zeros(256, bool)
_NUMBER_BYTES[np.frombuffer(b"0123456789+-.eE", np.uint8)] = True
_JPG_U32 = np.frombuffer(b".jpg", "<u4")[0]
_POW10 = 10.0 ** np.arange(_MAX_DIGITS - 1, -1, -1)
_POW10_FRAC = 10.0 ** np.arange(_MAX_NUMBER + 1)


class ReferenceFileError(ValueError, AbawError):
    """The sample file or release list itself cannot be used (names the file and the problem)."""


@dataclass(frozen=True)
class ValidationError:
    kind: str  # one of KINDS
    line: int | None  # 1-based line of the checked file; None when no line applies
    message: str
    subject: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        return f"{where}: [{self.kind}] {self.message}"


@dataclass
class ValidationReport:
    path: Path
    errors: list[ValidationError] = field(default_factory=list)  # the first max_keep of each kind
    counts: dict[str, int] = field(default_factory=dict)  # every error, by kind
    warnings: list[str] = field(default_factory=list)  # what could not be checked, and why
    rows: int = 0  # data lines (non-blank lines after the header)
    rows_per_subject: dict[str, int] = field(default_factory=dict)  # first block of each video
    references: dict[str, str] = field(default_factory=dict)  # sample / release paths used
    seconds: float = 0.0

    @property
    def valid(self) -> bool:
        return not self.counts

    @property
    def n_errors(self) -> int:
        return sum(self.counts.values())

    def format(self, max_per_kind: int = 20) -> str:
        name = self.path.name
        if self.valid:
            head = f"VALID: {name}: {self.rows:,} rows, {len(self.rows_per_subject)} videos ({self.seconds:.2f} s)"
            return "\n".join([head] + [f"  warning: {w}" for w in self.warnings])
        by_kind = ", ".join(f"{k} {self.counts[k]:,}" for k in KINDS if k in self.counts)
        out = [f"INVALID: {name}: {self.n_errors:,} error(s) ({by_kind}); {self.rows:,} rows read"]
        out += [f"  warning: {w}" for w in self.warnings]
        for kind in KINDS:
            if kind not in self.counts:
                continue
            kept = [e for e in self.errors if e.kind == kind][:max_per_kind]
            out += [f"  {e}" for e in kept]
            if self.counts[kind] > len(kept):
                out.append(f"  ... and {self.counts[kind] - len(kept):,} more [{kind}] error(s)")
        return "\n".join(out)

    def to_dict(self, max_per_kind: int = 20) -> dict:
        kept: Counter[str] = Counter()
        errors = []
        for e in self.errors:
            if kept[e.kind] < max_per_kind:
                kept[e.kind] += 1
                errors.append(str(e))
        return {
            "valid": self.valid, "rows": self.rows, "videos": len(self.rows_per_subject),
            "error_counts": dict(self.counts), "errors": errors, "warnings": list(self.warnings),
            "references": dict(self.references), "seconds": round(self.seconds, 3),
        }  # fmt: skip


@dataclass
class _Block:
    """One contiguous run of rows of the same video."""

    name: str
    first_line: int
    last_line: int = 0
    rows: int = 0
    max_frame: int = 0
    max_line: int = 0  # line that set max_frame
    beyond_line: int = 0  # first line whose frame exceeds the expected count
    expected: int = 0  # rows the sample asks for; 0 = unknown
    repeated: bool = False  # the video already had an earlier block


def _span(first: int, last: int) -> str:
    return f"frame {first:05d}" if first == last else f"frames {first:05d}-{last:05d}"


def _text(b: bytes, limit: int = 60) -> str:
    s = b.decode("utf-8", "backslashreplace")
    return repr(s if len(s) <= limit else s[:limit] + "...")


class _Bytes:
    """One chunk as a uint8 array with zero padding on both sides, so fixed-width windows that start
    before the chunk or run past its end stay inside the array (positions are chunk offsets)."""

    def __init__(self, data: bytes):
        self.a = np.frombuffer(data, np.uint8)
        self.buf = np.concatenate([np.zeros(_PAD, np.uint8), self.a, np.zeros(_PAD, np.uint8)])

    def left(self, starts: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
        """Row i = bytes [starts[i], starts[i] + lengths[i]) NUL-padded to ``width`` ([n, width] copy)."""
        if len(starts) == 0:
            return np.zeros((0, width), np.uint8)
        m = sliding_window_view(self.buf, width)[starts + _PAD]
        m *= np.arange(width, dtype=np.int64)[None, :] < lengths[:, None]
        return m

    def right(self, ends: np.ndarray, width: int) -> np.ndarray:
        """Row i = the ``width`` bytes just before ends[i] (not masked)."""
        return sliding_window_view(self.buf, width)[ends + _PAD - width]

    def text(self, start: int, end: int) -> bytes:
        return self.a[start:end].tobytes()


def _parse_decimals(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parse NUL-padded fields of the form [+-]digits[.digits] (at most 15 digits) without per-field
    Python: returns (values, ok). Anything else (exponents, letters, long fields) comes back not ok."""
    n, width = m.shape
    cols = np.ascontiguousarray(m.T)  # one contiguous row per character position
    d = cols - np.uint8(48)
    digit = d <= 9
    dot = cols == 46
    allowed = digit | dot | (cols == 0)
    if width:
        allowed[0] |= (cols[0] == 45) | (cols[0] == 43)
    mant = np.zeros(n, np.int64)
    frac = np.zeros(n, np.int8)  # digits after the point; small counters keep the loop cheap
    n_dot = np.zeros(n, np.int8)
    n_dig = np.zeros(n, np.int8)
    seen_dot = np.zeros(n, bool)
    ok = np.ones(n, bool)
    for j in range(width):
        mant = np.where(digit[j], mant * 10 + d[j], mant)
        frac += digit[j] & seen_dot
        seen_dot |= dot[j]
        n_dot += dot[j]
        n_dig += digit[j]
        ok &= allowed[j]
    ok &= (n_dot <= 1) & (n_dig >= 1) & (n_dig <= 15)
    values = mant / _POW10_FRAC[frac]  # exact operands, one correctly rounded division
    return (np.where(cols[0] == 45, -values, values) if width else values), ok


class _Scanner:
    """Streaming state: the open block, the blocks seen, error counts and the first errors of each kind."""

    def __init__(self, order: list[str] | None, counts: dict[str, int] | None, max_keep: int,
                 check_values: bool = True):
        self.check_values = check_values
        self.order = order
        self.position = {s: i for i, s in enumerate(order)} if order is not None else None
        self.counts_expected = counts or {}
        self.max_keep = max_keep
        self.errors: list[ValidationError] = []
        self.n_by_kind: Counter[str] = Counter()
        self.blocks: list[_Block] = []
        self.first_block: dict[str, _Block] = {}
        self.open: _Block | None = None
        self.next_line = 1
        self.rows = 0
        self.cr_lines = 0
        self.cr_first = 0
        self.max_position = -1
        self.max_position_name = ""

    # ---- error bookkeeping -----------------------------------------------------------------------
    def emit(self, kind: str, line: int | None, message: str, subject: str | None = None) -> None:
        self.n_by_kind[kind] += 1
        if self.n_by_kind[kind] <= self.max_keep:
            self.errors.append(ValidationError(kind, line, message, subject))

    def emit_many(self, kind: str, lines: np.ndarray, message: Callable[[int], str]) -> None:
        """Count len(lines) errors; build messages only for the ones kept (message(i) for lines[i])."""
        n = len(lines)
        if not n:
            return
        room = max(0, self.max_keep - self.n_by_kind[kind])
        self.n_by_kind[kind] += n
        for i in range(min(room, n)):
            self.errors.append(ValidationError(kind, int(lines[i]), message(i)))

    # ---- header ----------------------------------------------------------------------------------
    def header(self, raw: bytes) -> bool:
        """Check line 1; return True when it is a data row that must be scanned as such."""
        if raw == b"":
            self.emit("header", 1, "the file is empty")
            return False
        line = raw[:-1] if raw.endswith(b"\n") else raw
        cr = line.endswith(b"\r")
        line = line[:-1] if cr else line
        if line.startswith(b"\xef\xbb\xbf"):
            self.emit("header", 1, "the file starts with a UTF-8 byte-order mark; write plain ASCII")
            line = line[3:]
        if b".jpg," in line and line != HEADER:
            self.emit("header", 1, f"no header: line 1 is a data row; expected {HEADER.decode()!r}")
            return True  # scanned again as a data row, which counts its line ending
        if cr:
            self.cr_lines, self.cr_first = 1, 1
        if line == HEADER:
            return False
        if line == SWAPPED:
            self.emit("header", 1, "columns swapped: the header has arousal before valence; expected "
                                   f"{HEADER.decode()!r} (valence first)")
        else:
            self.emit("header", 1, f"expected header {HEADER.decode()!r}, found {_text(line)}")
        return False

    # ---- one chunk of whole lines ----------------------------------------------------------------
    def chunk(self, data: bytes) -> None:
        b = _Bytes(data)
        a = b.a
        ends = np.flatnonzero(a == 10)
        n = len(ends)
        if n == 0:
            return
        lineno = self.next_line + np.arange(n, dtype=np.int64)
        self.next_line += n
        starts = np.empty(n, np.int64)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1

        cr = (ends > starts) & (a[ends - 1] == 13)
        if cr.any():
            self.cr_first = self.cr_first or int(lineno[cr][0])
            self.cr_lines += int(cr.sum())
        stop = ends - cr
        blank = stop == starts
        self.emit_many("blank_line", lineno[blank], lambda i: "blank line")
        nul = np.zeros(n, bool)
        if not a.all():
            nul[np.unique(np.searchsorted(ends, np.flatnonzero(a == 0)))] = True
            self.emit_many("file", lineno[nul], lambda i: "NUL byte in the line (not a text file?)")
        live = ~blank & ~nul
        self.rows += int(n - blank.sum())

        commas = np.flatnonzero(a == 44)
        k0 = np.searchsorted(commas, starts)
        k1 = np.searchsorted(commas, stop)
        ncol = k1 - k0 + 1
        bad_cols = live & (ncol != 3)
        self.emit_many(
            "columns", lineno[bad_cols],
            lambda i, nc=ncol[bad_cols]: f"expected 3 columns (image_location,valence,arousal), found {nc[i]}",
        )  # fmt: skip
        commas_p = np.concatenate([commas, [0, 0]])  # so k0 and k0 + 1 always index something
        loc_end = np.where(k1 > k0, commas_p[k0], stop)

        names, frames, located = self._locations(b, live, starts, loc_end, lineno)
        self._sequence(names, frames, lineno[located])

        if self.check_values:
            three = live & (ncol == 3)
            c1, c2 = commas_p[k0[three]], commas_p[k0[three] + 1]
            self._numbers(b, "valence", c1 + 1, c2 - c1 - 1, lineno[three])
            self._numbers(b, "arousal", c2 + 1, stop[three] - c2 - 1, lineno[three])

    def _locations(self, b: _Bytes, live, starts, loc_end, lineno):
        """Split ``<video>/<digits>.jpg``; return names (bytes array), frames and the located-line mask."""
        slashes = np.flatnonzero(b.a == 47)
        s0 = np.searchsorted(slashes, starts)
        s1 = np.searchsorted(slashes, loc_end)
        slash = np.concatenate([slashes, [0]])[s0]
        name_len = slash - starts
        dig_len = loc_end - 4 - (slash + 1)
        ok = live & (s1 - s0 == 1) & (name_len >= 1) & (name_len <= _MAX_NAME)
        ok &= (dig_len >= 5) & (dig_len <= _MAX_DIGITS)
        ok &= b.right(loc_end, 4).view("<u4").ravel() == _JPG_U32

        # The digits, right-aligned in a fixed window that ends just before ".jpg".
        d = b.right(loc_end - 4, _MAX_DIGITS) - np.uint8(48)
        inside = np.arange(_MAX_DIGITS)[None, :] >= (_MAX_DIGITS - np.clip(dig_len, 0, _MAX_DIGITS))[:, None]
        ok &= ((d > 9) & inside).view(np.uint8) @ np.ones(_MAX_DIGITS, np.uint8) == 0
        value = (np.where(inside, d, 0).astype(np.float64) @ _POW10).astype(np.int64)
        # %05d: at least five digits, and no leading zero beyond that padding; frames are 1-based.
        lead = d[np.arange(len(d)), np.clip(_MAX_DIGITS - dig_len, 0, _MAX_DIGITS - 1)]
        ok &= ~((dig_len > 5) & (lead == 0)) & (value >= 1)

        bad = np.flatnonzero(live & ~ok)
        self.emit_many(
            "location", lineno[bad],
            lambda i: "image_location must be <video>/<frame as %05d>.jpg, found "
            + _text(b.text(starts[bad[i]], loc_end[bad[i]])),
        )  # fmt: skip

        li = np.flatnonzero(ok)
        width = int(name_len[li].max()) if len(li) else 1
        names = b.left(starts[li], name_len[li], width).view(f"S{width}").ravel()
        return names, value[li], ok

    def _numbers(self, b: _Bytes, column: str, starts, lengths, lineno) -> None:
        if len(starts) == 0:
            return
        width = int(min(lengths.max(initial=1), _MAX_NUMBER))
        m = b.left(starts, np.minimum(lengths, width), width)
        values, ok = _parse_decimals(m)
        ok &= (lengths >= 1) & (lengths <= _MAX_NUMBER)
        for i in np.flatnonzero(~ok & (lengths >= 1) & (lengths <= _MAX_NUMBER)):
            # Rare forms the vectorised parser leaves out (1e-3, long fields): plain characters only, so
            # "nan", "inf", " 1" or "1_0" stay errors whatever float() would accept.
            t = bytes(m[i]).rstrip(b"\0")
            if _NUMBER_BYTES[m[i][: len(t)]].all():
                try:
                    values[i], ok[i] = float(t), True
                except ValueError:
                    pass

        bad = np.flatnonzero(~ok)
        if len(bad):
            raw = [b.text(starts[i], starts[i] + lengths[i]) for i in bad]
            low = [r.strip().lower().lstrip(b"+-") for r in raw]
            nan = np.array([t == b"nan" for t in low], bool)
            inf = np.array([t in (b"inf", b"infinity") for t in low], bool)
            self.emit_many("not_finite", lineno[bad[nan]], lambda i: f"{column} is NaN")
            self.emit_many("not_finite", lineno[bad[inf]], lambda i: f"{column} is infinite")
            rest = [r for r, x, y in zip(raw, nan, inf, strict=True) if not (x or y)]
            self.emit_many(
                "number", lineno[bad[~nan & ~inf]],
                lambda i: f"{column} {_text(rest[i])} is not a plain decimal number" if rest[i]
                else f"{column} is empty",
            )  # fmt: skip
        parsed = np.flatnonzero(ok)
        finite = np.isfinite(values[parsed])
        self.emit_many("not_finite", lineno[parsed[~finite]], lambda i: f"{column} overflows to infinity")
        out = parsed[finite & (np.abs(values[parsed]) > 1.0)]
        self.emit_many("range", lineno[out], lambda i: f"{column} {values[out[i]]:g} is outside [-1, 1]")

    # ---- frames and blocks ---------------------------------------------------------------------------
    def _sequence(self, names: np.ndarray, frames: np.ndarray, lines: np.ndarray) -> None:
        m = len(names)
        if m == 0:
            return
        new = np.empty(m, bool)
        new[1:] = names[1:] != names[:-1]
        first_name = bytes(names[0]).decode("utf-8", "backslashreplace")
        continues = self.open is not None and self.open.name == first_name
        new[0] = not continues
        run_starts = np.flatnonzero(new)
        run_id = np.cumsum(new) - (0 if continues else 1)  # run 0 = the open block when it continues

        # Running maximum of the frame number within each run: a run's key offset exceeds every key
        # of earlier runs, so one maximum.accumulate over the chunk never mixes runs. The open block
        # enters as a virtual element 0 carrying its maximum so far.
        v_frame = self.open.max_frame if continues else 0
        v_line = self.open.max_line if continues else 0
        key = np.concatenate([[v_frame], run_id * _RUN_KEY + frames])
        run_max = np.maximum.accumulate(key)
        prev_max = np.maximum(run_max[:-1] - run_id * _RUN_KEY, 0)
        is_new_max = frames > prev_max
        setter = np.maximum.accumulate(np.concatenate([[v_line], np.where(is_new_max, lines, 0)]))
        prev_line = setter[:-1]  # the line holding prev_max (same run whenever prev_max > 0)
        step = frames - prev_max

        if not continues and self.open is not None:
            self._close(self.open)
        runs = self._open_runs(names, run_starts, lines, continues)
        expected = np.array([b.expected for b in runs])[run_id]
        who = [b.name for b in runs]

        # A repeated block is reported as such; its first frame is not a second error.
        repeated = np.array([blk.repeated for blk in runs])[run_id]
        start_late = (prev_max == 0) & (frames > 1) & ~repeated
        gap = (prev_max > 0) & (step > 1)
        dup = step == 0
        back = step < 0
        i_late, i_gap, i_dup, i_back = (np.flatnonzero(x) for x in (start_late, gap, dup, back))
        self.emit_many("frame", lines[i_late], lambda i: (
            f"video {who[run_id[i_late[i]]]} starts at frame {frames[i_late[i]]:05d}; expected 00001 "
            f"(missing {_span(1, frames[i_late[i]] - 1)})"))
        self.emit_many("frame", lines[i_gap], lambda i: (
            f"missing {_span(prev_max[i_gap[i]] + 1, frames[i_gap[i]] - 1)} of video {who[run_id[i_gap[i]]]} "
            f"(frame {frames[i_gap[i]]:05d} follows {prev_max[i_gap[i]]:05d})"))
        self.emit_many("duplicate", lines[i_dup], lambda i: (
            f"duplicate row: frame {frames[i_dup[i]]:05d} of video {who[run_id[i_dup[i]]]} is also on "
            f"line {prev_line[i_dup[i]]}"))
        self.emit_many("frame", lines[i_back], lambda i: (
            f"frame {frames[i_back[i]]:05d} of video {who[run_id[i_back[i]]]} comes after frame "
            f"{prev_max[i_back[i]]:05d} (line {prev_line[i_back[i]]}): out of order"))

        beyond = np.flatnonzero((expected > 0) & (frames > expected))
        if len(beyond):
            rids, first = np.unique(run_id[beyond], return_index=True)
            for r, f in zip(rids, first, strict=True):
                runs[r].beyond_line = runs[r].beyond_line or int(lines[beyond[f]])
        # Per-run totals (a handful of runs per chunk; the per-row work above is vectorised).
        bounds = list(run_starts) + [m]
        if continues:
            bounds = [0] + bounds
        for r, block in enumerate(runs):
            lo, hi = bounds[r], bounds[r + 1]
            block.rows += hi - lo
            block.last_line = int(lines[hi - 1])
            top = int(run_max[hi] - r * _RUN_KEY)
            if top > block.max_frame:
                block.max_frame = top
                block.max_line = int(setter[hi])
        for block in runs[:-1]:
            self._close(block)
        self.open = runs[-1]

    def _open_runs(self, names, run_starts, lines, continues) -> list[_Block]:
        """The blocks of this chunk's runs: the open one when it continues, then one new (checked) block each."""
        runs = [self.open] if continues else []
        for s in run_starts:
            name = bytes(names[s]).decode("utf-8", "backslashreplace")
            block = _Block(name=name, first_line=int(lines[s]), expected=self.counts_expected.get(name, 0))
            self._check_block(block)
            self.blocks.append(block)
            runs.append(block)
        return runs

    def _check_block(self, block: _Block) -> None:
        earlier = self.first_block.get(block.name)
        if earlier is not None:
            block.repeated = True
            self.emit("repeated_block", block.first_line, f"video {block.name} appears again (its rows started "
                      f"at line {earlier.first_line}); all rows of a video must be together", block.name)
            return
        self.first_block[block.name] = block
        if self.position is None:
            return
        pos = self.position.get(block.name)
        if pos is None:
            self.emit("unknown_video", block.first_line,
                      f"video {block.name} is not in the release list / sample file", block.name)
            return
        if pos < self.max_position:
            self.emit("order", block.first_line, f"video {block.name} (release position {pos + 1}) comes after "
                      f"{self.max_position_name} (position {self.max_position + 1}); keep the release-list "
                      "order", block.name)
        else:
            self.max_position, self.max_position_name = pos, block.name

    def _close(self, block: _Block) -> None:
        n = block.expected
        if not n or block.repeated:
            return
        if block.beyond_line:
            self.emit("count", block.beyond_line, f"video {block.name} has {block.rows} rows (frames up to "
                      f"{block.max_frame:05d}); the sample file has {n}: rows past frame {n:05d} start at line "
                      f"{block.beyond_line}", block.name)
        elif block.rows > n:
            self.emit("count", block.first_line, f"video {block.name} (lines {block.first_line}-{block.last_line}) "
                      f"has {block.rows} rows for its {n} frames (see the duplicate rows)", block.name)
        elif block.rows < n:
            self.emit("count", block.last_line, f"video {block.name} has {block.rows} rows; the sample file "
                      f"has {n} (its last row, frame {block.max_frame:05d}, is line {block.last_line})", block.name)

    def finish(self) -> None:
        if self.open is not None:
            self._close(self.open)
            self.open = None
        if self.cr_lines:
            self.emit("line_ending", self.cr_first, f"Windows line endings (\\r\\n) on {self.cr_lines:,} line(s); "
                      "write \\n only")
        if self.order is None:
            return
        eof = self.next_line
        placed = [(self.position[b.name], b.first_line) for b in self.blocks
                  if not b.repeated and b.name in self.position]
        for pos, name in enumerate(self.order):
            if name in self.first_block:
                continue
            after = [line for p, line in placed if p > pos]
            at = min(after) if after else eof
            where = f"before line {at}" if after else "at the end of the file"
            n = self.counts_expected.get(name)
            rows = f", {n} rows" if n else ""
            self.emit("missing_video", at, f"video {name} (release position {pos + 1}{rows}) is missing; it "
                      f"belongs {where}", name)


# ---- reading ---------------------------------------------------------------------------------------------
def _open(path: Path, scanner: _Scanner, stack: contextlib.ExitStack) -> IO[bytes] | None:
    """The byte stream to check: the file itself, or the one member of a zip (zip problems are errors)."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix.lower() != ".zip":
        return stack.enter_context(open(path, "rb"))
    try:
        zf = stack.enter_context(zipfile.ZipFile(path))
    except zipfile.BadZipFile as e:
        scanner.emit("file", None, f"{path.name} is not a readable zip: {e}")
        return None
    files = [i for i in zf.infolist() if not i.is_dir()]
    if len(files) != 1:
        scanner.emit("file", None, f"the zip must hold exactly one prediction file, found {len(files)}: "
                     + ", ".join(i.filename for i in files[:10]))
    if not files:
        return None
    if "/" in files[0].filename:
        scanner.emit("file", None, f"the prediction file must sit at the top level of the zip, found "
                     f"{files[0].filename!r}")
    return stack.enter_context(zf.open(files[0]))


def _scan(path: Path, scanner: _Scanner) -> None:
    with contextlib.ExitStack() as stack:
        stream = _open(path, scanner, stack)
        if stream is None:
            scanner.finish()
            return
        first = stream.readline(1 << 16)
        data_row = scanner.header(first)
        scanner.next_line = 1 if data_row else 2
        leftover = first if data_row else b""
        while True:
            data = stream.read(_CHUNK)
            if not data:
                break
            data = leftover + data if leftover else data
            cut = data.rfind(b"\n") + 1
            if cut:
                scanner.chunk(data[:cut])
            leftover = data[cut:]
        if leftover:  # a last line without "\n" is fine
            scanner.chunk(leftover + b"\n")
    scanner.finish()


def read_release(path: str | Path) -> list[str]:
    """Names of the release list, one per line (blank lines skipped); duplicates are an error."""
    path = Path(path)
    try:
        names = [s.strip() for s in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ReferenceFileError(f"cannot read the release list {path}: {e}") from e
    names = [s for s in names if s]
    seen: set[str] = set()
    dups = [s for s in names if s in seen or seen.add(s)]
    if dups:
        raise ReferenceFileError(f"release list {path} names video(s) twice: {sorted(set(dups))[:10]}")
    if not names:
        raise ReferenceFileError(f"release list {path} is empty")
    return names


def read_sample(path: str | Path) -> dict[str, int]:
    """Rows per video of the organisers' sample file (ordered as in the file), via this module's parser."""
    path = Path(path)
    scanner = _Scanner(None, None, max_keep=5, check_values=False)  # its values are placeholders
    _scan(path, scanner)
    structural = [e for e in scanner.errors if e.kind in _SAMPLE_FATAL]
    if structural:
        raise ReferenceFileError(f"sample file {path} is not a usable prediction file: "
                              + "; ".join(str(e) for e in structural[:5]))
    if not scanner.blocks:
        raise ReferenceFileError(f"sample file {path} has no rows")
    return {b.name: b.rows for b in scanner.blocks}


def check_submission(
    path: str | Path,
    sample: str | Path | None = None,
    release: str | Path | None = None,
    max_keep: int = 1000,
) -> ValidationReport:
    """Check a prediction file (or a .zip holding it) against the sample file and the release list."""
    t0 = time.perf_counter()
    path = Path(path)
    report = ValidationReport(path=path)
    counts = read_sample(sample) if sample else None
    order = read_release(release) if release else None
    if sample:
        report.references["sample"] = str(sample)
    if release:
        report.references["release"] = str(release)
    if order is not None and counts is not None:
        extra = [s for s in counts if s not in set(order)]
        no_count = [s for s in order if s not in counts]
        if extra:
            report.warnings.append(f"the sample file has {len(extra)} video(s) the release list lacks (not "
                                   f"expected in the submission): {extra[:5]}")
        if no_count:
            report.warnings.append(f"the sample file has no rows for {len(no_count)} video(s) of the release "
                                   f"list; their row counts are not checked: {no_count[:5]}")
    elif counts is not None:
        order = list(counts)
        report.warnings.append("no release list: the order is the sample file's")
    elif order is not None:
        report.warnings.append("no sample file: rows per video are not checked")
    else:
        report.warnings.append("no sample file or release list: names, order and row counts are not checked")

    scanner = _Scanner(order, counts, max_keep)
    _scan(path, scanner)
    report.errors = sorted(scanner.errors, key=lambda e: (e.line or 0, KINDS.index(e.kind)))
    report.counts = {k: scanner.n_by_kind[k] for k in KINDS if scanner.n_by_kind[k]}
    report.rows = scanner.rows
    report.rows_per_subject = {name: b.rows for name, b in scanner.first_block.items()}
    report.seconds = time.perf_counter() - t0
    return report


def validate_submission(
    path: str | Path, sample: str | Path | None = None, release: str | Path | None = None, max_keep: int = 1000
) -> list[ValidationError]:
    """The errors of a prediction file (empty when valid): the first ``max_keep`` of each kind.

    Raises FileNotFoundError for a missing file and ValueError for an unusable sample file or release list.
    """
    return check_submission(path, sample, release, max_keep).errors


def cli_validate(cfg, args: argparse.Namespace) -> int:
    """``abaw validate SUBMISSION [--sample FILE] [--release FILE]``: 0 when valid, 1 when not."""
    try:
        report = check_submission(args.submission, args.sample, args.release)
    except (OSError, ValueError) as e:
        print(f"abaw validate: {e}")
        return 2
    print(report.format(cfg.submit.max_print))
    return 0 if report.valid else 1

