"""What the validator found: one error (kind, line, message) and the report of a whole file."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# Printing order of error kinds, roughly from "the file cannot be read" to "a value is off".
KINDS = (
    "file", "header", "line_ending", "blank_line", "columns", "location", "unknown_video",
    "missing_video", "order", "repeated_block", "frame", "duplicate", "count", "number", "not_finite", "range",
)  # fmt: skip


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
