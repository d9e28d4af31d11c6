"""``abaw submit``: predict the test set with trained runs, write the one prediction file, check it with
the independent validator, package it under ``submissions/<name>/`` and, where ground truth exists (the
demo release), score it like the leaderboard.

Videos and row counts come from the index (``abaw data``): the release list's order and each video's
frame axis, which is the organisers' sample-file count, or for a video the sample file lacks its
container's frame count (with a warning in the output and the metadata).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

from abaw.config import Config, save_config, to_dict
from abaw.errors import AbawError
from abaw.submit.config import check_name
from abaw.submit.package import (
    discard,
    ensure_free,
    make_zip,
    publish,
    read_index,
    stage,
    submissions_root,
)
from abaw.submit.score import ScoreError, default_truth_dir, leaderboard, score_submission
from abaw.submit.validate import check_submission
from abaw.submit.writer import SubmissionWriteError, write_submission
from abaw.utils import atomic_write_json, code_version, file_digest

log = logging.getLogger(__name__)


class SubmissionError(RuntimeError, AbawError):
    """The submission cannot be made; the message says why and what to do."""


@dataclass
class References:
    """What the test set asks for: video order, rows per video and where each count came from."""

    order: list[str]
    counts: dict[str, int]
    count_source: dict[str, str]  # video -> "sample" | "container"
    release_list: Path
    sample: Path | None
    warnings: list[str] = field(default_factory=list)


# ---- runs ----------------------------------------------------------------------------------------------
def _run_variant(run: Path) -> str | None:
    try:
        return (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("model", {}).get("variant")
    except (OSError, yaml.YAMLError, AttributeError):
        return None


def _is_control_run(run: Path) -> bool:
    """Sanity-control runs (shuffled labels, shifted audio) must never be submitted by default."""
    try:
        controls = json.loads((run / "summary.json").read_text()).get("controls", {})
    except (OSError, ValueError):
        return False
    return bool(controls.get("shuffle_labels")) or bool(controls.get("audio_shift_s"))


def find_runs(cfg: Config, runs: list[str] | None = None) -> list[Path]:
    """The runs to ensemble: ``runs`` (or ``submit.runs``), each a folder or a name under
    ``<release_cache>/runs``; else the most recently finished run of the configured model variant."""
    base = cfg.release_cache / "runs"
    given = list(runs or cfg.submit.runs)
    if given:
        out: list[Path] = []
        for r in given:
            path = Path(r).expanduser()
            run = path if path.is_dir() else base / r
            if not run.is_dir():
                raise SubmissionError(f"run {r!r} not found (looked at {path.resolve()} and {base / r})")
            if not (run / "summary.json").is_file():
                raise SubmissionError(f"{run}: no summary.json, so training did not finish")
            if run.resolve() not in out:
                out.append(run.resolve())
        return out
    done = [
        (s.stat().st_mtime, s.parent)
        for s in base.glob("*/summary.json")
        if (s.parent / "best.ckpt").is_file() and _run_variant(s.parent) == cfg.model.variant
        and not _is_control_run(s.parent)
    ]
    if not done:
        raise SubmissionError(f"no finished {cfg.model.variant} run under {base}: train one (`make train`) "
                              "or name runs with --runs / submit.runs")
    return [max(done)[1]]


def _predict(cfg: Config, run_dirs: list[Path], table) -> tuple[dict[str, np.ndarray], dict | None]:
    """Post-processed, clipped test predictions of the ensemble, and its post-processing choice."""
    from abaw.submit.predict import predict_split

    preds, choice = predict_split(cfg, run_dirs, "test", table=table, return_choice=True)
    return preds, (choice.to_dict() if hasattr(choice, "to_dict") else choice)


def _run_summaries(run_dirs: list[Path]) -> list[dict]:
    from abaw.submit.predict import run_summaries

    return run_summaries(run_dirs)


# ---- what the test set asks for -------------------------------------------------------------------------
def test_references(cfg: Config, table) -> References:
    """Test videos in the index's order (the release list's) with the index's row counts (its frame
    axis: the sample file's count, else the container's frames), so the submission has exactly the
    frames the features and predictions were made on. Only the paths of the release list and sample
    file are looked up, for the independent validator."""
    from abaw.data.release import discover

    rel = discover(cfg.data, cfg.data_root)
    if rel.test_list is None:
        raise SubmissionError(f"{cfg.data_root}: no test-set release list (data.test_list={cfg.data.test_list!r})")
    warnings: list[str] = []
    if rel.sample_file is None:
        warnings.append(f"no sample prediction file (data.sample_file={cfg.data.sample_file!r}): row counts "
                        "are the containers' frame counts, which may differ from what the organisers expect")
    rows = [r for r in table.iter_rows(named=True) if r["split"] == "test"]
    if not rows:
        raise SubmissionError(f"{cfg.index_path}: the index has no test subjects (run `abaw data`)")
    order, counts, source = [], {}, {}
    for r in rows:
        s = r["subject"]
        if not r.get("n_frames"):
            why = "; ".join(r.get("errors") or []) or "no frame count"
            raise SubmissionError(f"{cfg.index_path}: test subject {s} has no row count ({why}); fix the "
                                  "release and re-run `abaw data`")
        order.append(s)
        counts[s] = int(r["n_frames"])
        source[s] = "sample" if r.get("sample_rows") is not None else "container"
        if source[s] == "container" and rel.sample_file is not None:
            warnings.append(f"{s}: not in the sample file; using its container's {counts[s]} frames")
    return References(order, counts, source, rel.test_list, rel.sample_file, warnings)


# ---- the whole stage -------------------------------------------------------------------------------------
def default_name(cfg: Config) -> str:
    return f"{cfg.model.variant}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


def _val_p_va(summaries: list[dict]) -> float | None:
    """Mean over the runs of each run's validation P_VA (post-processed where the run has it)."""
    vals = [s.get("val", {}).get("p_va_post", s.get("val", {}).get("p_va")) for s in summaries]
    vals = [float(v) for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def _feature_caches(summaries: list[dict]) -> dict[str, list[dict]]:
    caches: dict[str, list[dict]] = {}
    for s in summaries:
        for kind, info in (s.get("features") or {}).items():
            entry = {k: info.get(k) for k in ("name", "manifest_sha256", "dir") if info.get(k) is not None}
            if entry and entry not in caches.setdefault(kind, []):
                caches[kind].append(entry)
    return caches


def submit(cfg: Config, runs: list[str] | None = None, name: str | None = None) -> Path:
    """Make one submission; returns ``submissions/<name>/`` (its metadata.json says everything)."""
    from abaw.data.index import load_index

    t0 = time.perf_counter()
    root = submissions_root(cfg)
    name = check_name(name or cfg.submit.name or default_name(cfg))
    ensure_free(root, name)  # before the expensive part; checked again under the lock when publishing
    run_dirs = find_runs(cfg, runs)
    log.info("submission %s from %d run(s): %s", name, len(run_dirs), ", ".join(r.name for r in run_dirs))
    table = load_index(cfg).table
    refs = test_references(cfg, table)
    summaries = _run_summaries(run_dirs)
    t_pred = time.perf_counter()
    preds, postprocess = _predict(cfg, run_dirs, table)
    t_pred = time.perf_counter() - t_pred

    staging = stage(root, name)
    try:
        file = staging / cfg.submit.file_name
        written = write_submission(file, preds, refs.order, refs.counts, cfg.submit.float_format)
        zip_path = make_zip(file, staging / f"{name}.zip")
        checked = check_submission(zip_path, sample=refs.sample, release=refs.release_list)
        if not checked.valid:
            raise SubmissionError(f"the independent validator rejected the file; kept for inspection in "
                                  f"{staging}\n{checked.format(cfg.submit.max_print)}")
        truth = default_truth_dir(cfg)
        scores = score_submission(file, truth) if truth.is_dir() else None
        now = datetime.now(UTC)
        val = _val_p_va(summaries)
        meta = {
            "name": name,
            "created": now.isoformat(timespec="seconds"),
            "code_version": code_version(),
            "release": cfg.release_name,
            "data_root": str(cfg.data_root),
            "file": file.name,
            "file_sha256": written.digest,
            "zip": zip_path.name,
            "zip_sha256": file_digest(zip_path, n=64),
            "rows": written.rows,
            "videos": len(written.rows_per_subject),
            "rows_per_video": written.rows_per_subject,
            "row_count_source": refs.count_source,
            "references": {"release_list": str(refs.release_list),
                           "sample": str(refs.sample) if refs.sample else None},
            "length_adjustments": [a.__dict__ for a in written.adjusted],
            "clipped_values": written.clipped,
            "ignored_videos": written.ignored,
            "warnings": refs.warnings,
            "runs": summaries,
            "val_p_va_mean": val,
            "feature_caches": _feature_caches(summaries),
            "postprocess": postprocess,
            "validation": checked.to_dict(cfg.submit.max_print),
            "test_score": scores,
            "truth_dir": str(truth) if scores else None,
            "seconds": {"predict": round(t_pred, 2), "write": round(written.seconds, 2),
                        "validate": round(checked.seconds, 2), "total": round(time.perf_counter() - t0, 2)},
            "config": to_dict(cfg),
        }
        atomic_write_json(staging / "metadata.json", meta)
        save_config(cfg, staging / "config.yaml")
        row = {
            "name": name, "time": meta["created"], "runs": ";".join(r.name for r in run_dirs),
            "val_p_va": f"{val:.4f}" if val is not None else "",
            "test_p_va": f"{scores['p_va']:.4f}" if scores else "",
            "test_ccc_v": f"{scores['ccc_v']:.4f}" if scores else "",
            "test_ccc_a": f"{scores['ccc_a']:.4f}" if scores else "",
            "rows": written.rows, "videos": len(written.rows_per_subject), "zip": f"{name}/{zip_path.name}",
            "test_truth": scores["truth_digest"] if scores else "",
        }  # fmt: skip
        return publish(staging, root, name, row)
    except SubmissionError:
        raise
    except BaseException:
        discard(staging)
        raise


def describe(folder: Path) -> str:
    """What ``abaw submit`` prints: files, adjustments, validation and (demo) the leaderboard."""
    import json

    meta = json.loads((folder / "metadata.json").read_text())
    out = [f"submission {meta['name']}: {meta['rows']:,} rows, {meta['videos']} videos",
           f"  upload: {folder / meta['zip']}",
           f"  runs: {', '.join(Path(r['run']).name for r in meta['runs'])}"
           + (f" (validation P_VA {meta['val_p_va_mean']:.4f})" if meta["val_p_va_mean"] is not None else "")]
    out += [f"  warning: {w}" for w in meta["warnings"]]
    for a in meta["length_adjustments"]:
        out.append(f"  {a['subject']}: predicted {a['predicted']} frames, need {a['expected']}: {a['action']}")
    if meta["clipped_values"]:
        out.append(f"  clipped {meta['clipped_values']:,} values into [-1, 1]")
    v = meta["validation"]
    out.append(f"  validator: {'valid' if v['valid'] else 'INVALID'} ({v['rows']:,} rows, {v['seconds']:.2f} s)")
    if meta["test_score"]:
        s = meta["test_score"]
        # Only submissions scored against this same truth: another release's scores are not comparable
        # (rows from before the digest was recorded have none, and stay off the board).
        rows = [{"name": r["name"], "p_va": float(r["test_p_va"]), "ccc_v": float(r["test_ccc_v"] or "nan"),
                 "ccc_a": float(r["test_ccc_a"] or "nan")}
                for r in read_index(folder.parent) if r.get("test_p_va") and r.get("test_truth") == s["truth_digest"]]
        out.append(f"\nLeaderboard ({meta['truth_dir']}: {s['videos']} videos, {s['frames']:,} annotated frames)")
        out.append(leaderboard(rows, highlight=meta["name"]))
    return "\n".join(out)


def cli_submit(cfg: Config, args: argparse.Namespace) -> int:
    from abaw.data.release import ReleaseError
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        folder = submit(cfg, runs=getattr(args, "runs", None), name=getattr(args, "name", None))
    except (SubmissionError, SubmissionWriteError, ScoreError, ReleaseError, OSError) as e:
        print(f"abaw submit: {e}")
        return 1
    print(describe(folder))
    return 0
