"""The validator's reading: a prediction file streamed line by line, each line split by the ``csv`` module
and checked field by field; the blocks of rows of each video are followed as they go by.

Lines are counted here, before the csv reader sees them (``QUOTE_NONE``: one line is one record, and a
quote is a plain character, as in the organisers' format), so every error keeps the line number of the
file (the header is line 1) and line endings, NUL bytes and blank lines are judged on the raw bytes.
Every error is counted; the first ``max_keep`` of each kind are kept.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import math
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from abaw.submit.validate_report import ValidationError

HEADER = b"image_location,valence,arousal"
SWAPPED = b"image_location,arousal,valence"
_BOM = b"\xef\xbb\xbf"
# <video>/<frame>.jpg: a video name without "/" (at most 255 characters), a frame of 5 to 9 digits.
_LOCATION = re.compile(r"([^/]{1,255})/([0-9]{5,9})\.jpg")
# Characters a plain number may hold (1e-3, -.5, +0.25 included); float() decides the rest, so "nan",
# "inf", " 1" or "1_0" stay errors whatever float() would accept.
_NUMBER = re.compile(r"[0-9+\-.eE]{1,40}")


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


def _text(s: str | bytes, limit: int = 60) -> str:
    if isinstance(s, bytes):
        s = s.decode("utf-8", "backslashreplace")
    return repr(s if len(s) <= limit else s[:limit] + "...")


class Scanner:
    """Streaming state: the line, the open block, the blocks seen, error counts and the first errors."""

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
        self.line = 0  # the line being read
        self.rows = 0
        self.cr_lines = 0
        self.cr_first = 0
        self.max_position = -1
        self.max_position_name = ""

    def emit(self, kind: str, line: int | None, message: str, subject: str | None = None) -> None:
        self.n_by_kind[kind] += 1
        if self.n_by_kind[kind] <= self.max_keep:
            self.errors.append(ValidationError(kind, line, message, subject))

    # ---- the whole stream ------------------------------------------------------------------------
    def scan(self, stream: IO[bytes]) -> None:
        first = stream.readline()
        data_row = self.header(first)
        self.line = 0 if data_row else 1
        # Decoded in bulk; split at "\n" only, so a lone "\r" stays a character of its line.
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="backslashreplace", newline="\n")
        lines = itertools.chain([first.decode("utf-8", "backslashreplace")], text) if data_row else text
        check_values, number, frame = self.check_values, self.number, self.frame
        match_location, match_number = _LOCATION.fullmatch, _NUMBER.fullmatch
        for row in csv.reader(self._lines(lines), quoting=csv.QUOTE_NONE):
            line = self.line  # the reader takes one line per record, so this is the row's line
            if len(row) != 3:
                self.emit("columns", line, f"expected 3 columns (image_location,valence,arousal), found {len(row)}")
            m = match_location(row[0])
            # %05d: at least five digits, and no leading zero beyond that padding; frames are 1-based.
            if m is None or (len(m[2]) > 5 and m[2][0] == "0") or m[2] == "00000":
                self.emit("location", line, "image_location must be <video>/<frame as %05d>.jpg, found "
                          + _text(row[0]))
            else:
                frame(m[1], int(m[2]), line)
            if check_values and len(row) == 3:
                for column, value in (("valence", row[1]), ("arousal", row[2])):
                    try:  # the common case in one step: plain characters, a finite value in [-1, 1]
                        if match_number(value) and -1.0 <= float(value) <= 1.0:
                            continue
                    except ValueError:
                        pass
                    number(column, value, line)
        self.finish()

    def _lines(self, lines: Iterable[str]) -> Iterator[str]:
        """Each data line without its ending; blank, NUL and CR-ended lines are judged here."""
        for text in lines:
            self.line += 1
            if text.endswith("\n"):
                text = text[:-1]
            if text.endswith("\r"):
                text = text[:-1]
                self.cr_lines += 1
                self.cr_first = self.cr_first or self.line
            if not text:
                self.emit("blank_line", self.line, "blank line")
                continue
            self.rows += 1
            if "\0" in text:
                self.emit("file", self.line, "NUL byte in the line (not a text file?)")
                continue
            yield text.replace("\r", "\\r") if "\r" in text else text  # csv would end the record there

    # ---- header ----------------------------------------------------------------------------------
    def header(self, raw: bytes) -> bool:
        """Check line 1; return True when it is a data row that must be scanned as such."""
        if raw == b"":
            self.emit("header", 1, "the file is empty")
            return False
        line = raw[:-1] if raw.endswith(b"\n") else raw
        cr = line.endswith(b"\r")
        line = line[:-1] if cr else line
        if line.startswith(_BOM):
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

    # ---- values, frames and blocks ----------------------------------------------------------------
    def number(self, column: str, text: str, line: int) -> None:
        """Report what is wrong with a value that is not a plain number in [-1, 1]."""
        value = None
        if _NUMBER.fullmatch(text):
            with contextlib.suppress(ValueError):
                value = float(text)
        if value is None:
            low = text.strip().lower().lstrip("+-")
            if low == "nan":
                self.emit("not_finite", line, f"{column} is NaN")
            elif low == "inf":
                self.emit("not_finite", line, f"{column} is infinite")
            elif text:
                self.emit("number", line, f"{column} {_text(text)} is not a plain decimal number")
            else:
                self.emit("number", line, f"{column} is empty")
        elif not math.isfinite(value):
            self.emit("not_finite", line, f"{column} overflows to infinity")
        else:
            self.emit("range", line, f"{column} {value:g} is outside [-1, 1]")

    def frame(self, name: str, frame: int, line: int) -> None:
        block = self.open
        if block is None or block.name != name:
            if block is not None:
                self._close(block)
            block = _Block(name=name, first_line=line, expected=self.counts_expected.get(name, 0))
            self._check_block(block)
            self.blocks.append(block)
            self.open = block
        prev = block.max_frame
        if prev == 0:
            # A repeated block is reported as such; its first frame is not a second error.
            if frame > 1 and not block.repeated:
                self.emit("frame", line, f"video {name} starts at frame {frame:05d}; expected 00001 "
                          f"(missing {_span(1, frame - 1)})")
        elif frame > prev + 1:
            self.emit("frame", line, f"missing {_span(prev + 1, frame - 1)} of video {name} "
                      f"(frame {frame:05d} follows {prev:05d})")
        elif frame == prev:
            self.emit("duplicate", line, f"duplicate row: frame {frame:05d} of video {name} is also on "
                      f"line {block.max_line}")
        elif frame < prev:
            self.emit("frame", line, f"frame {frame:05d} of video {name} comes after frame {prev:05d} "
                      f"(line {block.max_line}): out of order")
        if frame > prev:
            block.max_frame, block.max_line = frame, line
        if block.expected and frame > block.expected and not block.beyond_line:
            block.beyond_line = line
        block.rows += 1
        block.last_line = line

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
        eof = self.line + 1
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


# ---- the file or the zip holding it ----------------------------------------------------------------------
def _open(path: Path, scanner: Scanner, stack: contextlib.ExitStack) -> IO[bytes] | None:
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


def scan_file(path: Path, scanner: Scanner) -> None:
    with contextlib.ExitStack() as stack:
        stream = _open(path, scanner, stack)
        if stream is None:
            scanner.finish()
            return
        scanner.scan(stream)
