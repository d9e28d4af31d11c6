"""A cached subject is reused only while what made it is unchanged (issue 10, items 4-6, 12, 15):
input identity records, fills that are never final, a broken sample file that stops the test subjects
without touching their features, a manifest that says what is true now, and the features stage's
hand-off to later stages (``feature_dir`` without timm or weights hashing)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_features import FAST, HAND, _hand_cfg, hand, snapshot  # noqa: F401  (hand: a fixture)

from abaw.config import load_config, with_overrides
from abaw.features.cache import FeatureCache
from abaw.features.extract import cli_features, extract_features, feature_dir, resolve_feature_dir
from abaw.features.handoff import FeaturesNotExtractedError

REPO = Path(__file__).resolve().parent.parent


def _image(path: Path, seed: int, size=(48, 40)) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=95)


@pytest.fixture
def own_hand(hand, tmp_path):  # noqa: F811
    """A private copy of the hand-made release (these tests rewrite its crops)."""
    root, table = hand
    copy = tmp_path / "release"
    shutil.copytree(root, copy)
    return copy, table


def _copy_release(synth_release: Path, tmp_path: Path) -> Path:
    root = tmp_path / "release"
    shutil.copytree(synth_release, root, ignore=shutil.ignore_patterns("ground_truth"))
    return root


# ---- item 4: input identity --------------------------------------------------------------------------
def test_crop_rewritten_after_extraction_is_extracted_again(own_hand, tmp_path):
    root, table = own_hand
    cfg = _hand_cfg((root, table), tmp_path)
    first = extract_features(cfg, "visual", index=table)
    assert first.ok and first.complete
    cache = FeatureCache(first.cache_dir)
    before = np.array(cache.load("a")[0])

    crop = root / "cropped_aligned" / "a" / "00004.jpg"  # frame 3
    _image(crop, seed=99)
    os.utime(crop, ns=(crop.stat().st_atime_ns, crop.stat().st_mtime_ns + 10**9))
    second = extract_features(cfg, "visual", index=table)
    assert "a" in second.extracted and {"b", "c"} <= set(second.skipped), second.summary()
    after = np.array(cache.load("a")[0])
    assert not np.array_equal(before[3], after[3]) and np.array_equal(before[2], after[2])
    assert second.complete

    # Nothing changed since: a finished real result is skipped (the fill "d" is redone, see below).
    third = extract_features(cfg, "visual", index=table)
    assert sorted(third.skipped) == ["a", "b", "c"] and third.extracted == ["d"]
    rec = cache.record("a")
    assert rec["inputs"]["n_frames"] == HAND["a"][0] and rec["inputs"]["crops"] == len(HAND["a"][1])


def test_fill_is_never_a_finished_result(own_hand, tmp_path):
    root, table = own_hand
    cfg = _hand_cfg((root, table), tmp_path)
    first = extract_features(cfg, "visual", index=table)
    cache = FeatureCache(first.cache_dir)
    assert first.complete
    # The crops of "d" turn up (a remounted disk, a re-run face detector): the zeros are replaced.
    d = root / "cropped_aligned" / "d"
    d.mkdir()
    for i in range(3):
        _image(d / f"{i + 1:05d}.jpg", seed=i)
    table = table.with_columns(
        crop_dir=table["subject"].map_elements(lambda s: f"cropped_aligned/{s}", return_dtype=str)
    )
    second = extract_features(cfg, "visual", index=table)
    assert second.extracted == ["d"] and second.complete and not second.filled
    feats, mask = cache.load("d")
    assert mask.tolist() == [True, True, True, False, False] and np.abs(feats[:3].astype(np.float32)).sum() > 0
    assert "fill" not in cache.record("d")


def test_fills_are_recorded_and_reported(own_hand, tmp_path):
    root, table = own_hand
    report = extract_features(_hand_cfg((root, table), tmp_path), "visual", index=table)
    cache = FeatureCache(report.cache_dir)
    assert cache.record("d")["fill"].startswith("no face crops") and not cache.record("a").get("fill")
    assert report.complete and cache.manifest["filled"] == ["d"] and "filled with zeros" in report.summary()


def test_unreadable_video_replaced_by_a_good_one_is_extracted_again(synth_release, tmp_path):
    """The issue's case: zero audio for an unreadable raw video must not be 'done' forever."""
    from abaw.data.index import load_index

    root = _copy_release(synth_release, tmp_path)
    cfg = load_config("configs/test.yaml", [f"data.root={root}", f"cache_root={tmp_path / 'cache'}", *FAST])
    table = load_index(cfg).table
    test = table.filter((table["split"] == "test") & table["has_audio"])
    subject, video = test["subject"][0], Path(test["video_path"][0])
    assert table.filter(table["video_path"] == str(video)).height == 1
    good = video.read_bytes()
    video.write_bytes(b"not a video at all" * 100)

    first = extract_features(cfg, "audio")
    assert first.ok and subject in first.extracted, first.summary()
    assert any(w.startswith(f"{subject}: no frame timestamps") for w in first.warnings)
    cache = FeatureCache(first.cache_dir)
    assert not cache.load(subject)[1].any()

    video.write_bytes(good)
    second = extract_features(cfg, "audio")
    assert second.ok and second.extracted == [subject] and second.complete, second.summary()
    assert cache.load(subject)[1].mean() > 0.9 and set(second.skipped) == set(table["subject"]) - {subject}
    assert "fill" not in cache.record(subject)
    # item 12: the README's promise, a warning for each video without audio
    no_audio = table.filter(~table["has_audio"].fill_null(True))["video"].unique().to_list()
    assert no_audio and all(any(w.startswith(f"{v}: raw video") and "no audio stream" in w
                                for w in first.warnings) for v in no_audio), first.warnings


def test_features_warns_for_each_video_without_audio(tmp_path, monkeypatch):
    import types

    import polars as pl
    from test_features import FakeAudio

    from abaw.features import extract as extract_mod

    fake = types.SimpleNamespace(**{k: getattr(FakeAudio, k) for k in dir(FakeAudio) if not k.startswith("_")})
    monkeypatch.setattr(extract_mod, "_audio_module", lambda: fake)
    FakeAudio.calls = []
    rows = []
    for v, sides, has in (("quiet", ("_left", "_right"), False), ("loud", ("",), True), ("mute", ("",), False)):
        (tmp_path / f"{v}.mp4").write_bytes(b"")
        rows += [dict(subject=v + s, video=v, n_frames=3, video_path=str(tmp_path / f"{v}.mp4"),
                      frame_times=[0.0, 0.1, 0.2], has_audio=has) for s in sides]
    cfg = load_config("configs/test.yaml", [f"cache_root={tmp_path / 'cache'}"])
    report = extract_features(cfg, "audio", index=pl.DataFrame(rows))
    silent = [w for w in report.warnings if "no audio stream" in w]
    assert len(silent) == 2 and silent[0].startswith("mute: raw video mute.mp4 has no audio stream")
    assert "quiet_left, quiet_right are zeros" in silent[1] and report.ok


# ---- item 5: a broken sample file --------------------------------------------------------------------
def test_broken_sample_file_stops_test_subjects_and_keeps_their_features(synth_release, tmp_path, capsys):
    from abaw.data.index import load_index

    root = _copy_release(synth_release, tmp_path)
    cfg = load_config("configs/test.yaml", [f"data.root={root}", f"cache_root={tmp_path / 'cache'}", *FAST])
    first = extract_features(cfg, "visual")
    assert first.ok and first.complete
    table = load_index(cfg).table
    tests = table.filter(table["split"] == "test")["subject"].to_list()
    cache = FeatureCache(first.cache_dir)
    kept = {s: (cache.feature_path(s).read_bytes(), cache.feature_path(s).stat().st_mtime_ns) for s in tests}

    sample = next(root.glob("*test_set_sample.txt"))
    lines = sample.read_text().splitlines()
    lines.insert(3, lines[2])  # a duplicated row
    sample.write_text("\n".join(lines) + "\n")
    result = load_index(cfg)
    assert any(e.startswith("sample file unreadable") and f"{sample}:4" in e for e in result.errors)
    for row in result.table.filter(result.table["split"] == "test").iter_rows(named=True):
        assert row["n_frames"] is None and not row["usable"], row["subject"]
        assert any(f"{sample}:4" in e for e in row["errors"]), row["errors"]
        assert not any("not in the sample file" in o for o in row["odd"])

    assert cli_features(cfg, argparse.Namespace(shard=None, only="visual")) == 1
    err = capsys.readouterr().err
    for s in tests:
        assert f"FAILED {s}: no frame axis in the index" in err
        assert (cache.feature_path(s).read_bytes(), cache.feature_path(s).stat().st_mtime_ns) == kept[s]
    assert "cache not complete" in err and not cache.complete


# ---- item 6: the manifest says what is true now ----------------------------------------------------
def test_failed_subject_is_never_reported_as_a_complete_cache(own_hand, tmp_path, capsys):
    root, table = own_hand
    cfg = _hand_cfg((root, table), tmp_path)
    assert extract_features(cfg, "visual", index=table).complete
    (root / "cropped_aligned" / "a" / "00004.jpg").write_bytes(b"corrupted after extraction")
    report = extract_features(cfg, "visual", index=table)
    assert list(report.failed) == ["a"] and "00004.jpg" in report.failed["a"]
    assert not report.complete and "cache not complete" in report.summary() and not (
        report.cache_dir / "manifest.json"
    ).exists()
    assert not FeatureCache(report.cache_dir).complete


def test_an_older_manifest_is_not_trusted_when_a_subject_fails(own_hand, tmp_path):
    root, table = own_hand
    cfg = _hand_cfg((root, table), tmp_path)
    first = extract_features(cfg, "visual", index=table)
    assert first.complete
    (first.cache_dir / "a.npy").unlink()  # lost (a cleanup script, a disk error) ...
    (root / "cropped_aligned" / "a" / "00004.jpg").write_bytes(b"garbage")  # ... and unreadable now
    report = extract_features(cfg, "visual", index=table)
    text = report.summary()
    assert not report.ok and "FAILED a:" in text and "cache not complete" in text and "cache complete" not in text
    assert not report.complete and not FeatureCache(first.cache_dir).complete


# ---- item 15 / contract C3: the hand-off -------------------------------------------------------------
def test_feature_dir_follows_the_handoff_record(own_hand, tmp_path):
    import timm
    import torch

    root, table = own_hand
    torch.manual_seed(0)
    weights = tmp_path / "weights" / "face.pth"
    weights.parent.mkdir()
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), weights)
    cfg = _hand_cfg(
        (root, table),
        tmp_path,
        "features.visual.model=test_resnet",
        f"features.visual.weights={weights}",
        "features.visual.allow_random=false",
    )
    with pytest.raises(FeaturesNotExtractedError, match=r"no visual features .*run `abaw features`"):
        feature_dir(cfg, "visual")
    report = extract_features(cfg, "visual", index=table)
    assert feature_dir(cfg, "visual") == report.cache_dir == resolve_feature_dir(cfg, "visual")[0]
    # speed-only settings do not matter
    assert feature_dir(with_overrides(cfg, ["features.visual.batch_size=5"]), "visual") == report.cache_dir

    # A fresh process finds the cache without importing timm or reading the weights file.
    code = (
        "import sys; from abaw.config import load_config; from abaw.features.extract import feature_dir; "
        "import abaw.utils as u; u.file_digest = None; "
        f"cfg = load_config('configs/test.yaml', {sys.argv[:0] + cfg_overrides(cfg)!r}); "
        "print(feature_dir(cfg, 'visual')); print('timm' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert out == [str(report.cache_dir), "False"]

    # Moved after extraction: the features are still found.
    moved = tmp_path / "elsewhere.pth"
    weights.rename(moved)
    assert feature_dir(cfg, "visual") == report.cache_dir
    # Copied back (same content, new mtime): still the same cache.
    shutil.copy(moved, weights)
    assert feature_dir(cfg, "visual") == report.cache_dir
    # Re-made at the same path with other weights: refused, never the stale features.
    torch.manual_seed(1)
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), weights)
    with pytest.raises(FeaturesNotExtractedError, match=r"face\.pth was re-made .*run `abaw features`"):
        feature_dir(cfg, "visual")
    again = extract_features(cfg, "visual", index=table)
    assert again.cache_dir != report.cache_dir and feature_dir(cfg, "visual") == again.cache_dir


def cfg_overrides(cfg) -> list[str]:
    v = cfg.features.visual
    return [
        f"data.root={cfg.data.root}",
        f"cache_root={cfg.cache_root}",
        f"features.visual.model={v.model}",
        f"features.visual.weights={v.weights}",
        "features.visual.allow_random=false",
        f"features.visual.img_size={v.img_size}",
    ]


def test_missing_features_are_one_line_user_errors(tmp_path):
    from abaw.errors import AbawError

    cfg = load_config("configs/test.yaml", [f"cache_root={tmp_path}"])
    for kind in ("visual", "audio"):
        with pytest.raises(AbawError, match=rf"no {kind} features were extracted.*abaw features"):
            feature_dir(cfg, kind)


def test_records_are_plain_json_beside_the_features(own_hand, tmp_path):
    root, table = own_hand
    report = extract_features(_hand_cfg((root, table), tmp_path), "visual", index=table)
    rec = json.loads((report.cache_dir / "b.inputs.json").read_text())
    assert set(rec) == {"n_frames", "inputs"} and rec["n_frames"] == 6
    assert set(rec["inputs"]) == {"n_frames", "crops", "crops_digest"} and rec["inputs"]["crops"] == 6
