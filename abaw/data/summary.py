"""The console summary of a release index (``abaw data``): split counts, frame rates, mismatches,
audio, missing crops, odd files and errors. Reads an ``IndexResult``; builds nothing."""

from __future__ import annotations

import numpy as np
import polars as pl


def few(names: list[str], k: int = 5) -> str:
    """The first ``k`` names, and how many there are in all when that is more."""
    return ", ".join(names[:k]) + (f", ... ({len(names)} in all)" if len(names) > k else "")


_FPS_BINS = [(0, 15, "<15"), (15, 25, "15-25"), (25, 29, "25-29"), (29, 31, "29-31"), (31, 1e9, ">=31")]


def _lines(title: str, items: list[str], indent: str = "  ") -> list[str]:
    return [f"{title} ({len(items)}):"] + [indent + i for i in items] if items else [f"{title}: none"]


def _runs_text(runs: list[list[int]], k: int = 4) -> str:
    shown = " ".join(f"[{s},{e})" for s, e in runs[:k])
    return shown + (f" ... ({len(runs)} runs)" if len(runs) > k else "")


def summary_text(result) -> str:
    """A human summary of an ``abaw.data.index.IndexResult``: split counts, frame rates, mismatches, audio, missing crops, odd files, errors."""
    t = result.table
    out = [f"Release {result.root}"]
    if result.index_path:
        how = "read from cache" if result.from_cache else "built"
        out.append(f"Index {result.index_path} ({how} {result.built})")
    out.append("")
    out.append(f"{'split':<6}{'subjects':>9}{'usable':>8}{'frames':>11}{'labelled':>11}{'crops':>11}")
    for split in ("train", "val", "test", None):
        part = t if split is None else t.filter(pl.col("split") == split)
        if split is not None and part.is_empty():
            continue
        frames = int(part["n_frames"].fill_null(0).sum())
        labelled = int(part["valid_labels"].fill_null(0).sum())
        crops = int(part["crops_present"].fill_null(0).sum())
        labelled_text = f"{labelled:>11,}" if split != "test" else f"{'-':>11}"
        out.append(
            f"{split or 'all':<6}{part.height:>9}{int(part['usable'].sum()):>8}{frames:>11,}"
            f"{labelled_text}{crops:>11,}"
        )
    videos = t.filter(pl.col("decoded_frames").is_not_null()).unique(
        "video", keep="first", maintain_order=True
    )
    out.append("")
    if videos.height:
        fps = videos["fps"].to_numpy()
        bins = "  ".join(f"{label}: {int(((fps >= lo) & (fps < hi)).sum())}" for lo, hi, label in _FPS_BINS)
        slowest = videos.sort("fps").row(0, named=True)
        out.append(
            f"Raw videos probed: {videos.height} (decoded frames {int(videos['decoded_frames'].sum()):,}); "
            f"fps median {np.median(fps):.2f}, lowest {slowest['fps']:.2f} ({slowest['video']}), "
            f"highest {fps.max():.2f}"
        )
        out.append(f"  fps distribution: {bins}")
    per_video = [
        (r["video"], o)
        for r in videos.iter_rows(named=True)
        for o in r["odd"]
        if o.startswith(("wrong fps", "variable frame rate", "video stream starts"))
    ]
    for key, title in (
        ("wrong fps", "Wrong fps in file names"),
        ("variable frame rate", "Variable frame rate"),
        ("video stream starts", "Video stream starting after the container start"),
    ):
        out += _lines(title, [f"{v}: {o}" for v, o in per_video if o.startswith(key)])
    no_audio = videos.filter(~pl.col("has_audio"))["video"].to_list()
    # Counted by video (the list itself is shortened to 20 names).
    out += (
        [f"Videos without audio ({len(no_audio)}):", "  " + few(no_audio, 20)]
        if no_audio
        else ["Videos without audio: none"]
    )
    out.append("")
    out += _lines(
        "Count mismatches (label/sample rows vs video frames vs crop files)",
        [f"{r['subject']}: {'; '.join(r['mismatches'])}" for r in t.iter_rows(named=True) if r["mismatches"]],
    )
    missing = t.filter(pl.col("missing_crop_runs").list.len() > 0)
    total_missing = sum(sum(e - s for s, e in runs) for runs in missing["missing_crop_runs"].to_list())
    out += _lines(
        f"Missing crops (no face detected; {total_missing:,} frames in all)",
        [
            f"{r['subject']}: {sum(e - s for s, e in r['missing_crop_runs'])} of {r['n_frames']} frames: "
            f"{_runs_text(r['missing_crop_runs'])}"
            for r in missing.iter_rows(named=True)
        ],
    )
    unl = t.filter(pl.col("unlabelled_runs").list.len() > 0)
    out += _lines(
        "Unannotated (-5) runs (masked out of every loss and metric)",
        [f"{r['subject']}: {_runs_text(r['unlabelled_runs'])}" for r in unl.iter_rows(named=True)],
    )
    odd_keys = ("wrong fps", "variable frame rate", "video stream starts")
    odd = [
        f"{r['subject']}: {o}"
        for r in t.iter_rows(named=True)
        for o in r["odd"]
        if not o.startswith(odd_keys)
    ]
    subjects = set(t["subject"])
    release_notes = [w for w in result.warnings if w.split(": ", 1)[0] not in subjects]
    out += _lines("Odd files and notes", release_notes + odd)
    out.append("")
    if result.errors:
        out += _lines("ERRORS (these make subjects or the release unusable)", result.errors)
    else:
        out.append("No errors: every subject is usable.")
    return "\n".join(out)
