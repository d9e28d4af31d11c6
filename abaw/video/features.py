"""The clip's features, made exactly as the runs' training features were (contract C2).

Each run folder's ``features.json`` records, per kind, the feature cache it trained on and that cache's
``settings.json`` (backbone, weights digest, preprocessing, fill policy, audio window...). All runs must
record the same settings. The extractor is built from the run's recorded config, and the settings that
config resolves to must equal the recorded ones; when they do not (a weights file changed or moved, a
code change in the extractor), the run is refused rather than fed features it never saw.

Extraction itself is the features stage's own code (``abaw.features.extract.extract_features``) on a
one-subject index whose crop folder holds the clip's aligned crops and whose frame times are the clip's
decoded timestamps, so audio windows sit on the real frame clock exactly as in ``abaw features``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from abaw.config import Config, with_overrides
from abaw.video.errors import RunFeaturesError

KINDS = ("visual", "audio")
RECORD = "features.json"


def _canonical(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def read_record(run_dir: Path) -> dict:
    """The run's ``features.json``, checked to name settings for both kinds."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        raise RunFeaturesError(f"{run_dir}: no {RECORD} (the run predates it, or did not start training); "
                               "retrain it so abaw video knows which features it was trained on")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunFeaturesError(f"{path}: not valid JSON ({e})") from e
    for kind in KINDS:
        entry = record.get(kind)
        if not isinstance(entry, dict) or not isinstance(entry.get("settings"), dict):
            raise RunFeaturesError(f"{path}: no {kind} settings recorded")
    return record


def _differences(a: dict, b: dict) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k, '<absent>')!r} vs {b.get(k, '<absent>')!r}" for k in keys if a.get(k) != b.get(k)]


def common_settings(run_dirs: Sequence[Path]) -> dict[str, dict]:
    """{kind: settings} shared by every run; ``RunFeaturesError`` naming the runs and the differing
    settings when they were trained on different features."""
    first = None
    for run in run_dirs:
        rec = read_record(run)
        settings = {k: _canonical(rec[k]["settings"]) for k in KINDS}
        if first is None:
            first = (run, settings)
            continue
        for kind in KINDS:
            diff = _differences(first[1][kind], settings[kind])
            if diff:
                raise RunFeaturesError(
                    f"runs {first[0]} and {run} were trained on different {kind} features "
                    f"({'; '.join(diff[:4])}); an ensemble needs runs trained on the same features"
                )
    return first[1]


def extraction_config(run_dir: Path, run_cfg: Config, recorded: dict[str, dict], work: Path,
                      device: str | None = None) -> Config:
    """The run's config, moved to ``work`` (its own cache root), after checking that its features
    settings resolve to exactly the recorded ones."""
    from abaw.features.extract import feature_settings
    from abaw.features.registry import WeightsError

    # Crops are decoded in this process: forked DataLoader workers deadlock once the detector's
    # (LiteRT/XNNPACK) threads exist. Workers change speed only, never the features.
    features: dict = {"visual": {"num_workers": 0}}
    if device:
        features["device"] = device
    overrides: dict = {"cache_root": str(work), "data": {"name": "video"}, "features": features}
    cfg = with_overrides(run_cfg, overrides)
    for kind in KINDS:
        try:
            _, settings = feature_settings(cfg, kind)
        except (WeightsError, ValueError, OSError) as e:
            raise RunFeaturesError(f"{run_dir}: cannot rebuild its {kind} extractor from config.yaml: {e}") from e
        diff = _differences(recorded[kind], _canonical(settings))
        if diff:
            raise RunFeaturesError(
                f"{run_dir}: its config.yaml no longer resolves to the {kind} features it was trained on "
                f"({'; '.join(diff[:4])}); restore the weights file it names, or retrain"
            )
    return cfg


def subject_table(subject: str, crop_dir: Path, video_path: Path, frame_times: np.ndarray):
    """A one-row index table in the columns the features stage reads."""
    import polars as pl

    return pl.DataFrame({
        "subject": [subject],
        "video": [subject],
        "split": ["test"],
        "n_frames": [len(frame_times)],
        "crop_dir": [str(crop_dir)],
        "video_path": [str(video_path)],
        "label_file": [None],
        "frame_times": [np.asarray(frame_times, np.float64).tolist()],
    }, schema_overrides={"label_file": pl.Utf8})


def extract(cfg: Config, table) -> dict[str, Path]:
    """Fill both caches for the table's subject (reused when already complete); {kind: cache dir}."""
    from abaw.features.extract import extract_features

    dirs = {}
    for kind in KINDS:
        report = extract_features(cfg, kind, index=table)
        if not report.ok:
            raise RunFeaturesError(f"{kind} features of the clip failed: {report.summary()}")
        dirs[kind] = report.cache_dir
    return dirs
