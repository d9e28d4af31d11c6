"""Score a prediction file against ground-truth annotation files, the way the leaderboard does: CCC of
valence and of arousal over all annotated frames of all test videos pooled (population variance),
P_VA their mean.

The truth folder holds ``<video>.txt`` in the annotation format (header ``valence,arousal``, -5 = not
annotated, excluded). Only the demo release has one (``<data_root>/ground_truth/Test_Set``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import polars as pl

from abaw.errors import AbawError

HEADER = "image_location,valence,arousal"


class ScoreError(ValueError, AbawError):
    """A prediction file or truth folder that cannot be scored (names the file/video and the problem)."""


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise ScoreError(f"no such file: {path}")
    if path.suffix.lower() != ".zip":
        return path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        files = [i for i in zf.infolist() if not i.is_dir()]
        if len(files) != 1:
            raise ScoreError(f"{path}: the zip must hold exactly one prediction file, found {len(files)}")
        return zf.read(files[0])


def read_predictions(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``video -> (frames int64 [n] (1-based), values float64 [n, 2])`` from a prediction file or zip."""
    path = Path(path)
    data = _read_bytes(path)
    header = data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
    if header != HEADER:
        # A swapped header would silently score valence as arousal: refuse rather than guess.
        raise ScoreError(f"{path}:1: header must be {HEADER!r}, got {header!r} (run `abaw validate`)")
    try:
        df = pl.read_csv(
            io.BytesIO(data),
            schema={"image_location": pl.String, "valence": pl.Float64, "arousal": pl.Float64},
            quote_char=None,
        )
    except pl.exceptions.PolarsError as e:
        raise ScoreError(f"{path}: cannot parse as image_location,valence,arousal: {e} (run `abaw validate`)") from e
    parts = df["image_location"].str.extract_groups(r"^(.+)/(\d+)\.jpg$")
    df = df.with_columns(video=parts.struct.field("1"), frame=parts.struct.field("2").cast(pl.Int64))
    bad = df.with_row_index("row").filter(pl.col("frame").is_null())
    if len(bad):
        row = bad.row(0, named=True)
        raise ScoreError(f"{path}:{row['row'] + 2}: image_location {row['image_location']!r} is not "
                         "<video>/<frame>.jpg (run `abaw validate`)")
    out = {}
    for (video,), part in df.partition_by("video", as_dict=True, maintain_order=True).items():
        out[video] = (part["frame"].to_numpy(), part.select("valence", "arousal").to_numpy())
    return out


def _aligned(video: str, frames: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Predictions on frames 1..n of the truth (NaN where the file has none)."""
    pred = np.full((n, 2), np.nan)
    inside = (frames >= 1) & (frames <= n)
    idx = frames[inside] - 1
    if len(np.unique(idx)) != len(idx):
        raise ScoreError(f"video {video}: a frame is predicted twice (run `abaw validate`)")
    pred[idx] = values[inside]
    return pred


def score_submission(path: str | Path, truth_dir: str | Path) -> dict:
    """``{p_va, ccc_v, ccc_a, frames, videos, ignored_videos, truth_digest}`` of a prediction file against
    ``truth_dir/<video>.txt``. Every annotated frame of every truth video must have a finite prediction."""
    from abaw.data.annotations import read_annotations
    from abaw.metrics import p_va

    truth_dir = Path(truth_dir)
    truth_files = sorted(truth_dir.glob("*.txt"))
    if not truth_files:
        raise ScoreError(f"no ground-truth files (<video>.txt) in {truth_dir}")
    preds = read_predictions(path)
    all_pred, all_gold = [], []
    # What was scored against: a leaderboard ranks only submissions of the same truth (release).
    digest = hashlib.sha256()
    for file in truth_files:
        data = file.read_bytes()
        digest.update(f"{file.name}\0{len(data)}\0".encode() + data)
        video = file.stem
        ann = read_annotations(file)
        if video not in preds:
            raise ScoreError(f"{path}: no predictions for video {video} ({ann.n_valid} annotated frames)")
        pred = _aligned(video, *preds[video], len(ann))
        need = ann.valid
        holes = np.flatnonzero(need & ~np.isfinite(pred).all(axis=1))
        if len(holes):
            raise ScoreError(f"video {video}: no finite prediction for {len(holes)} annotated frame(s), first "
                             f"{holes[0] + 1:05d} (run `abaw validate`)")
        all_pred.append(pred[need])
        all_gold.append(ann.values[need].astype(np.float64))
    pred, gold = np.concatenate(all_pred), np.concatenate(all_gold)
    if not len(pred):
        raise ScoreError(f"the truth files in {truth_dir} have no annotated frames")
    scores = {k: float(v) for k, v in p_va(pred, gold).items()}
    truth = {f.stem for f in truth_files}
    return {**scores, "frames": int(len(pred)), "videos": len(truth_files),
            "ignored_videos": [v for v in preds if v not in truth], "truth_digest": digest.hexdigest()[:16]}


def default_truth_dir(cfg) -> Path:
    return Path(cfg.submit.truth_dir) if cfg.submit.truth_dir else cfg.data_root / "ground_truth" / "Test_Set"


def leaderboard(rows: list[dict], highlight: str | None = None) -> str:
    """A leaderboard table of ``rows`` (``name``, ``p_va``, ``ccc_v``, ``ccc_a``), best P_VA first."""
    rows = sorted(rows, key=lambda r: -r["p_va"])
    width = max([len("submission")] + [len(r["name"]) for r in rows])
    out = [f"  {'rank':>4}  {'submission':<{width}}  {'P_VA':>7}  {'CCC_v':>7}  {'CCC_a':>7}"]
    for i, r in enumerate(rows, 1):
        mark = "  <-" if r["name"] == highlight else ""
        out.append(f"  {i:>4}  {r['name']:<{width}}  {r['p_va']:7.4f}  {r['ccc_v']:7.4f}  {r['ccc_a']:7.4f}{mark}")
    return "\n".join(out)


def cli_score(cfg, args: argparse.Namespace) -> int:
    """``abaw score SUBMISSION [--truth DIR]``: print P_VA, CCC_v and CCC_a."""
    truth = Path(args.truth) if args.truth else default_truth_dir(cfg)
    try:
        s = score_submission(args.submission, truth)
    except (OSError, ValueError) as e:
        print(f"abaw score: {e}")
        return 2
    print(f"test set ({truth}): {s['videos']} videos, {s['frames']:,} annotated frames")
    print(leaderboard([{"name": Path(args.submission).name, **s}]))
    if s["ignored_videos"]:
        print(f"  ({len(s['ignored_videos'])} predicted video(s) have no ground truth and were ignored)")
    return 0
