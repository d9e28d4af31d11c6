"""An independent check of an ABAW VA prediction file (or a .zip holding it).

Independent on purpose: it shares no code with the writer (or with abaw.data's readers) so that a bug
there cannot hide here. Three parts: this module (the references and the check as a whole),
``validate_scan`` (the file streamed line by line through the ``csv`` module, every check with its line
number; the header is line 1) and ``validate_report`` (the errors and their report).

The sample file is read with the same scanner: it is a prediction file too, and its blocks give the
rows each video must have. The release list gives the order (the sample's order when there is none).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from abaw.errors import AbawError
from abaw.submit.validate_report import KINDS, ValidationError, ValidationReport
from abaw.submit.validate_scan import Scanner, scan_file

__all__ = ["KINDS", "ReferenceFileError", "ValidationError", "ValidationReport", "check_submission",
           "read_release", "read_sample", "validate_submission"]

# Errors that make a sample file's row counts untrustworthy (its header, values and columns do not).
_SAMPLE_FATAL = {"file", "location", "repeated_block", "frame", "duplicate"}


class ReferenceFileError(ValueError, AbawError):
    """The sample file or release list itself cannot be used (names the file and the problem)."""


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
    """Rows per video of the organisers' sample file (ordered as in the file), via the same scanner."""
    path = Path(path)
    scanner = Scanner(None, None, max_keep=5, check_values=False)  # its values are placeholders
    scan_file(path, scanner)
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

    scanner = Scanner(order, counts, max_keep)
    scan_file(path, scanner)
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

