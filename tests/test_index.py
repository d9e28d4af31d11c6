"""Release discovery, test list / sample file readers, and the index: every trap planted by the synthetic
generator is reported (driven by its traps.json), nothing is read from ground_truth/, crop folders are
listed once, the saved index is reused until the release changes, and ``abaw data`` lists every
unusable subject at once."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from abaw.config import load_config, with_overrides
from abaw.data.config import DataConfig
from abaw.data.index import SCHEMA, build_index, cli_data, load_index
from abaw.data.release import ReleaseError, discover, read_release_list, read_sample_counts, source_video
from abaw.data.summary import summary_text


# ---- names -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "subject, video",
    [
        ("10-60-1280x720_right", "10-60-1280x720"),
        ("10-60-1280x720_left", "10-60-1280x720"),
        ("118-30-640x480", "118-30-640x480"),
        ("video_left_right", "video_left"),  # only the last suffix goes
        ("a_leftx", "a_leftx"),
        ("_left", "_left"),  # nothing would remain
        ("Left_left", "Left"),
    ],
)
def test_source_video_strips_only_the_side_suffix(subject, video):
    assert source_video(subject) == video


# ---- discovery ---------------------------------------------------------------------------------------
def _touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


@pytest.fixture
def layout(tmp_path) -> Path:
    """A release skeleton (empty files: discovery never opens them) with the awkward bits."""
    root = tmp_path / "Aff-Wild2 release"
    ann = "7th ABAW Annotations/VA_Estimation_Challenge"
    _touch(
        root,
        f"{ann}/Train_Set/a.txt",
        f"{ann}/Train_Set/b_left.txt",
        f"{ann}/Train_Set/b_right.txt",
        f"{ann}/Train_Set/notes.doc",
        f"{ann}/Validation_Set/c.txt",
        "cropped_aligned/a/00001.jpg",
        "cropped_aligned/b_left/00001.jpg",
        "cropped_aligned/zz/video.mp4",  # inside crops: never a raw video
        "cropped/a/00001.jpg",
        "batch1/a.avi",
        "batch1/sub/deeper/a.mp4",  # .mp4 beats .avi wherever it sits
        "batch2/b.mp4",
        "batch2/c.avi",
        "batch2/t1.MP4",
        "ground_truth/c.mp4",  # decoys: the hidden test labels' folder is never searched
        "ground_truth/Test_Set/t1.txt",
        "ground_truth/decoy_test_set_release.txt",
        "ground_truth/decoy_VA_test_set_sample.txt",
        ".cache/d.mp4",
        "Valence_Arousal_Estimation_Challenge_test_set_release.txt",
        "CVPR_7th_ABAW_VA_test_set_sample.txt",
    )
    return root


def test_discover_finds_every_part_and_ignores_ground_truth(layout):
    rel = discover(DataConfig(), layout)
    assert rel.problems == []
    assert rel.annotations == layout / "7th ABAW Annotations" / "VA_Estimation_Challenge"
    assert sorted(rel.label_files["train"]) == ["a", "b_left", "b_right"]
    assert sorted(rel.label_files["val"]) == ["c"]
    assert rel.crops == layout / "cropped_aligned" and rel.crops_unaligned == layout / "cropped"
    assert rel.videos == {
        "a": layout / "batch1/sub/deeper/a.mp4",
        "b": layout / "batch2/b.mp4",
        "c": layout / "batch2/c.avi",
        "t1": layout / "batch2/t1.MP4",
    }
    assert rel.test_list == layout / "Valence_Arousal_Estimation_Challenge_test_set_release.txt"
    assert rel.sample_file == layout / "CVPR_7th_ABAW_VA_test_set_sample.txt"
    assert all("ground_truth" not in str(p) for p in [*rel.videos.values(), rel.test_list, rel.sample_file])
    assert rel.video_for("b_left") == rel.video_for("b_right") == layout / "batch2/b.mp4"
    assert any("notes.doc" in n for n in rel.notes)
    assert any("video a: using batch1/sub/deeper/a.mp4, ignoring batch1/a.avi" in n for n in rel.notes)


def test_discover_follows_the_config(layout):
    os.rename(layout / "cropped_aligned", layout / "faces")
    os.rename(layout / "batch2", layout / "media")
    cfg = DataConfig(crops="faces", video_dirs=["media"], video_exts=[".avi", ".mp4"], train_set="Train_Set")
    rel = discover(cfg, layout)
    assert rel.crops == layout / "faces"
    # Only media/ is searched, and .avi now wins.
    assert rel.videos == {
        "b": layout / "media/b.mp4",
        "c": layout / "media/c.avi",
        "t1": layout / "media/t1.MP4",
    }


def test_discover_lists_every_problem(layout):
    _touch(
        layout, "6th ABAW Annotations/VA_Estimation_Challenge/Train_Set/a.txt", "x/other_test_set_release.txt"
    )
    shutil.rmtree(layout / "cropped_aligned")
    rel = discover(DataConfig(video_dirs=[".", "no_such_dir"]), layout)
    text = "\n".join(rel.problems)
    assert "several matches for the annotation folder" in text and "6th ABAW" in text and "7th ABAW" in text
    assert "several matches for the test set release list" in text
    assert "no crop folder" in text
    assert "no_such_dir" in text
    with pytest.raises(ReleaseError, match="not a folder"):
        discover(DataConfig(), layout / "nowhere")


# ---- test list and sample file ---------------------------------------------------------------------
def test_release_list_and_sample_counts(tmp_path):
    lst = tmp_path / "x_test_set_release.txt"
    lst.write_text("b\r\na_left\n\na_right\n")
    assert read_release_list(lst) == ["b", "a_left", "a_right"]
    sample = tmp_path / "x_VA_test_set_sample.txt"
    rows = ["image_location,valence,arousal"]
    rows += [f"b/{i:05d}.jpg,0,0" for i in range(1, 4)] + [
        f"a_left/{i:05d}.jpg,0.1,-0.2" for i in range(1, 3)
    ]
    sample.write_text("\n".join(rows) + "\n\n")
    counts = read_sample_counts(sample)
    assert counts == {"b": 3, "a_left": 2} and list(counts) == ["b", "a_left"]


@pytest.mark.parametrize(
    "rows, line, words",
    [
        (["loc,valence,arousal", "b/00001.jpg,0,0"], 1, "header must start with 'image_location'"),
        (
            ["image_location,valence,arousal", "b/00001.jpg,0,0", "b/00003.jpg,0,0"],
            3,
            "frame 3 where frame 2",
        ),
        (["image_location,valence,arousal", "b/00002.jpg,0,0"], 2, "frame 2 where frame 1"),
        (
            ["image_location,valence,arousal", "b/00001.jpg,0,0", "c/00001.jpg,0,0", "b/00002.jpg,0,0"],
            4,
            "resume",
        ),
        (["image_location,valence,arousal", "b/00001.jpg,0,0", "b-00002.jpg,0,0"], 3, "expected '<video>/"),
        (
            ["image_location,valence,arousal", "b/00001.jpg,0,0", "", "b/00002.jpg,0,0"],
            3,
            "expected '<video>/",
        ),
        (["image_location,valence,arousal", "b/00001.png,0,0"], 2, "expected '<video>/"),
    ],
)
def test_bad_sample_files_name_the_line(tmp_path, rows, line, words):
    p = tmp_path / "s_VA_test_set_sample.txt"
    p.write_text("\n".join(rows) + "\n")
    with pytest.raises(ReleaseError) as ei:
        read_sample_counts(p)
    assert str(ei.value).startswith(f"{p}:{line}: ") and words in str(ei.value), str(ei.value)


def test_bad_release_lists(tmp_path):
    p = tmp_path / "l.txt"
    p.write_text("a\nb\na\n")
    with pytest.raises(ReleaseError, match=r"l\.txt:3: 'a' listed twice \(first on line 1\)"):
        read_release_list(p)
    p.write_text("a\nb/00001.jpg,0,0\n")
    with pytest.raises(ReleaseError, match=r"l\.txt:2: expected one video name"):
        read_release_list(p)
    p.write_text("\n\n")
    with pytest.raises(ReleaseError, match="no video names"):
        read_release_list(p)


# ---- the index on the generated release, checked against what the generator planted --------------------
@pytest.fixture(scope="module")
def traps(synth_release) -> dict:
    return json.loads((synth_release / "ground_truth" / "traps.json").read_text())


@pytest.fixture(scope="module")
def built(synth_cfg):
    return build_index(synth_cfg)


def _rows(result) -> dict[str, dict]:
    return {r["subject"]: r for r in result.table.iter_rows(named=True)}


def _has(row, prefix: str) -> bool:
    return any(o.startswith(prefix) for o in row["odd"])


def _check_low_fps(row, facts, rows):
    assert row["fps"] == pytest.approx(facts["fps_nominal"], rel=1e-6) and row["fps"] < 15


def _check_wrong_fps_in_name(row, facts, rows):
    assert row["fps_in_name"] == facts["fps_in_name"]
    assert _has(row, "wrong fps in file name"), row["odd"]


def _check_vfr(row, facts, rows):
    assert row["vfr"] and _has(row, "variable frame rate")
    # Irregular timestamps are kept as they are: compare with an independent decode.
    with av.open(row["video_path"]) as c:
        ref = sorted(float(f.pts * f.time_base) for f in c.decode(video=0))
    n = min(len(ref), row["n_frames"])
    np.testing.assert_array_equal(row["frame_times"][:n], ref[:n])


def _check_offset(row, facts, rows):
    assert facts["first_video_pts_s"] > 0
    assert row["video_start"] == pytest.approx(facts["first_video_pts_s"], abs=1e-9)
    assert row["frame_times"][0] == pytest.approx(facts["first_video_pts_s"], abs=1e-9)
    assert _has(row, "video stream starts at")


def _check_left_right(row, facts, rows):
    video = source_video(row["subject"])
    pair = [r for r in rows.values() if r["video"] == video]
    assert len(pair) == 2 and {r["subject"] for r in pair} == {f"{video}_left", f"{video}_right"}
    assert pair[0]["video_path"] == pair[1]["video_path"] and Path(pair[0]["video_path"]).stem == video
    assert Path(row["crop_dir"]).name == row["subject"] and Path(row["label_file"]).stem == row["subject"]


def _check_missing_crops_start(row, facts, rows):
    assert row["missing_crop_runs"][0][0] == 0


def _check_missing_crops_middle(row, facts, rows):
    assert any(0 < s and e < row["n_frames"] for s, e in row["missing_crop_runs"])


def _check_unlabelled_middle(row, facts, rows):
    assert any(0 < s and e < row["n_frames"] for s, e in row["unlabelled_runs"])
    assert row["valid_labels"] == row["label_rows"] - sum(e - s for s, e in row["unlabelled_runs"])


def _check_rows_more(row, facts, rows):
    extra = row["label_rows"] - row["decoded_frames"]
    assert extra > 0 and any(
        m.startswith(f"label rows {row['label_rows']} vs video") for m in row["mismatches"]
    )
    t = np.array(row["frame_times"])
    assert len(t) == row["label_rows"]
    step = np.median(np.diff(t[: row["decoded_frames"]]))
    np.testing.assert_allclose(np.diff(t[-extra - 1 :]), step, rtol=1e-9)


def _check_rows_fewer(row, facts, rows):
    assert row["label_rows"] < row["decoded_frames"] and len(row["frame_times"]) == row["label_rows"]
    assert any(m.startswith(f"label rows {row['label_rows']} vs video") for m in row["mismatches"])


def _check_no_audio(row, facts, rows):
    assert row["has_audio"] is False and row["audio_rate"] is None


def _check_test_count(row, facts, rows):
    assert row["split"] == "test" and row["sample_rows"] != row["decoded_frames"]
    assert any(m.startswith(f"sample rows {row['sample_rows']} vs video") for m in row["mismatches"])


def _check_avi(row, facts, rows):
    assert row["video_path"].endswith(".avi")


def _check_odd_label(row, facts, rows):
    assert row["usable"] and _has(row, "label file: CRLF")


CHECKS = {
    "low_fps": _check_low_fps,
    "wrong_fps_in_name": _check_wrong_fps_in_name,
    "variable_frame_rate": _check_vfr,
    "stream_start_offset": _check_offset,
    "left_right": _check_left_right,
    "missing_crops_start": _check_missing_crops_start,
    "missing_crops_middle": _check_missing_crops_middle,
    "unlabelled_middle": _check_unlabelled_middle,
    "label_rows_more": _check_rows_more,
    "label_rows_fewer": _check_rows_fewer,
    "no_audio": _check_no_audio,
    "test_count_mismatch": _check_test_count,
    "avi_video": _check_avi,
    "odd_label_file": _check_odd_label,
}


def test_index_reports_every_planted_trap(built, traps, synth_release):
    rows = _rows(built)
    kinds = {t["kind"] for t in traps["traps"]}
    assert kinds <= set(CHECKS), f"trap kinds this test does not check yet: {kinds - set(CHECKS)}"
    for t in traps["traps"]:
        row = rows[t["subject"]]
        try:
            CHECKS[t["kind"]](row, traps["subjects"][t["subject"]], rows)
        except AssertionError as e:
            raise AssertionError(f"trap {t} not reported: {e}") from e

    # And nothing is reported where nothing was planted.
    def planted(*ks):
        return {t["subject"] for t in traps["traps"] if t["kind"] in ks}

    def noted(prefix):
        return {s for s, r in rows.items() if _has(r, prefix)}

    assert noted("wrong fps in file name") == planted("wrong_fps_in_name")
    assert noted("video stream starts at") == planted("stream_start_offset")
    assert {s for s, r in rows.items() if r["vfr"]} == planted("variable_frame_rate")
    assert {s for s, r in rows.items() if r["mismatches"]} == planted(
        "label_rows_more", "label_rows_fewer", "test_count_mismatch"
    )
    assert built.errors == []


def test_index_matches_every_subjects_facts(built, traps, synth_release):
    rows = _rows(built)
    assert set(rows) == set(traps["subjects"])  # nothing missing, nothing from ground_truth/
    assert built.table.columns == list(SCHEMA)
    for subject, f in traps["subjects"].items():
        r = rows[subject]
        where = f"{subject}: {r}"
        assert r["split"] == f["split"] and r["video"] == f["video"], where
        assert r["video_path"] == str(synth_release / f["video_path"]), where
        assert r["decoded_frames"] == f["decoded_frames"], where
        assert r["n_frames"] == (f["label_rows"] if f["split"] != "test" else f["sample_rows"]), where
        assert r["label_rows"] == f["label_rows"] and r["sample_rows"] == f["sample_rows"], where
        assert len(r["frame_times"]) == r["n_frames"], where
        assert r["frame_times"][0] == pytest.approx(f["first_video_pts_s"], abs=1e-9), where
        assert np.all(np.diff(r["frame_times"]) > 0), where
        assert r["fps"] == pytest.approx(f["fps_nominal"], rel=1e-5), where
        assert r["vfr"] == f["vfr"] and r["has_audio"] == f["has_audio"], where
        assert r["audio_rate"] == f["audio_rate"] and r["audio_codec"] == f["audio_codec"], where
        assert r["missing_crop_runs"] == f["missing_crop_runs"], where
        assert r["crops_present"] == r["n_frames"] - sum(e - s for s, e in f["missing_crop_runs"]), where
        if f["split"] != "test":
            assert r["unlabelled_runs"] == f["unlabelled_runs"], where
            assert r["label_file"].endswith(f"{subject}.txt") and "ground_truth" not in r["label_file"]
        else:
            assert r["label_file"] is None and r["unlabelled_runs"] is None
        if not subject.startswith("video"):  # <id>-<fps>-<WxH> names
            assert r["fps_in_name"] == f["fps_in_name"], where
        assert r["crop_size"] == [112, 112] and r["usable"] and r["errors"] == [], where
        assert r["probe_method"] == "packets", where


def test_summary_on_the_generated_release(built, traps):
    text = summary_text(built)
    rows = _rows(built)
    for t in traps["traps"]:
        if t["kind"] in ("wrong_fps_in_name", "variable_frame_rate", "stream_start_offset"):
            assert rows[t["subject"]]["video"] in text
    no_audio = [t["subject"] for t in traps["traps"] if t["kind"] == "no_audio"]
    assert f"Videos without audio ({len(no_audio)}):" in text
    for t in traps["traps"]:
        if t["kind"] in (
            "label_rows_more",
            "label_rows_fewer",
            "test_count_mismatch",
            "missing_crops_middle",
        ):
            assert f"  {t['subject']}: " in text
    assert "fps distribution" in text and "No errors" in text
    assert "train" in text and "val" in text and "test" in text


# ---- saving, caching, listing crops once ---------------------------------------------------------------
def test_summary_counts_every_video_without_audio(built):
    import dataclasses

    import polars as pl

    videos = built.table["video"].unique(maintain_order=True).to_list()[:3]
    silent = built.table.with_columns(
        has_audio=pl.when(pl.col("video").is_in(videos)).then(False).otherwise(pl.col("has_audio"))
    )
    text = summary_text(dataclasses.replace(built, table=silent))
    listed = next(line for line in text.splitlines() if line.startswith("Videos without audio"))
    n = silent.filter(~pl.col("has_audio")).unique("video").height
    assert n >= 3 and listed == f"Videos without audio ({n}):"


def test_index_is_saved_reused_and_rebuilt_when_the_release_changes(synth_release, tmp_path, monkeypatch):
    src = tmp_path / "rel"
    shutil.copytree(synth_release, src, copy_function=os.link)  # hard links: cheap, and we only unlink
    cfg = load_config("configs/test.yaml", [f"data.root={src}", f"cache_root={tmp_path / 'cache'}"])

    seen: dict[str, int] = {}
    real_scandir = os.scandir

    def counting(path="."):
        seen[str(path)] = seen.get(str(path), 0) + 1
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting)
    first = load_index(cfg)
    monkeypatch.setattr(os, "scandir", real_scandir)
    crop_dirs = [p for p in (src / "cropped_aligned").iterdir()]
    # Every subject's crop folder was listed exactly once; the release walk never entered them.
    assert {str(p): seen.get(str(p), 0) for p in crop_dirs} == {str(p): 1 for p in crop_dirs}
    assert not first.from_cache
    assert cfg.index_path.is_file() and (cfg.index_path.parent / "config.yaml").is_file()
    meta = json.loads((cfg.index_path.parent / "index.json").read_text())
    assert meta["subjects"] == first.table.height and meta["errors"] == []

    again = load_index(cfg)
    assert again.from_cache and again.warnings == first.warnings
    assert again.table.equals(first.table)

    # A changed label file makes the saved index stale.
    label = Path(first.table.filter(first.table["split"] == "train")["label_file"][0])
    lines = label.read_text().splitlines()
    lines[1] = "0.000,0.000"
    label.unlink()  # break the hard link before writing
    label.write_text("\n".join(lines) + "\n")
    assert not load_index(cfg).from_cache
    # So does a removed crop (the folder's mtime moves) and a different data setting.
    crop = next(p for p in crop_dirs if any(p.iterdir()))
    next(crop.iterdir()).unlink()
    assert not load_index(cfg).from_cache
    assert load_index(cfg).from_cache
    cfg2 = with_overrides(cfg, ["data.video_exts=[.avi, .mp4]"])
    assert not load_index(cfg2).from_cache
    assert load_index(with_overrides(cfg2, ["data.probe_workers=1"])).from_cache  # workers change nothing


def test_cli_lists_every_unusable_subject_at_once(synth_release, traps, tmp_path, capsys):
    src = tmp_path / "broken"
    shutil.copytree(synth_release, src, copy_function=os.link)
    subs = traps["subjects"]
    plain = [s for s, f in subs.items() if f["split"] != "test" and not s.endswith(("_left", "_right"))]
    assert len(plain) >= 4
    no_video, bad_labels, no_crops, odd_crops = plain[:4]
    test_subject = next(s for s, f in subs.items() if f["split"] == "test")

    # 1. the raw video is gone (a decoy of the same name under ground_truth/ must not stand in)
    video = src / subs[no_video]["video_path"]
    video.unlink()
    shutil.copy(src / subs[bad_labels]["video_path"], src / "ground_truth" / video.name)
    # 2. an unparseable annotation file (unlink first: the copy shares inodes with the session release)
    label = next((src / "8th ABAW Annotations").rglob(f"{bad_labels}.txt"))
    lines = label.read_text().splitlines()
    lines[5] = "0.2,high"  # file line 6
    label.unlink()
    label.write_text("\n".join(lines) + "\n")
    # 3. no crops at all
    shutil.rmtree(src / "cropped_aligned" / no_crops)
    # Harmless: a test video left out of the sample file, a stray crop past the end, an odd crop name.
    sample = next(src.glob("*VA_test_set_sample.txt"))
    kept = [ln for ln in sample.read_text().splitlines() if not ln.startswith(f"{test_subject}/")]
    sample.unlink()
    sample.write_text("\n".join(kept) + "\n")
    crops_of = src / "cropped_aligned" / odd_crops
    n = subs[odd_crops]["label_rows"]
    shutil.copy(next(crops_of.iterdir()), crops_of / f"{n + 5:05d}.jpg")
    (crops_of / "Thumbs.db").write_bytes(b"x")
    # 4. a subject in two splits (indexed once, as train, but the release needs fixing)
    ann = src / "8th ABAW Annotations" / "VA_Estimation_Challenge"
    first, other = (
        ("Train_Set", "Validation_Set")
        if subs[odd_crops]["split"] == "train"
        else ("Validation_Set", "Train_Set")
    )
    shutil.copy(ann / first / f"{odd_crops}.txt", ann / other / f"{odd_crops}.txt")

    cfg = load_config("configs/test.yaml", [f"data.root={src}", f"cache_root={tmp_path / 'cache'}"])
    rc = cli_data(cfg, argparse.Namespace())
    out = capsys.readouterr().out
    assert rc == 1
    errors = out[out.index("ERRORS") :]
    assert f"{no_video}: no raw video {subs[no_video]['video']}" in errors
    assert f"{bad_labels}: annotation file unusable: {label}:6: not a finite number in '0.2,high'" in errors
    assert f"{no_crops}: no crops at all" in errors
    assert f"{odd_crops}: listed in both train and val; kept in train only" in errors
    assert errors.count("\n  ") == 4, errors  # exactly those four

    rows = _rows(load_index(cfg))
    assert not rows[no_video]["usable"] and not rows[bad_labels]["usable"] and not rows[no_crops]["usable"]
    t = rows[test_subject]
    assert t["usable"] and t["n_frames"] == t["decoded_frames"] and t["sample_rows"] is None
    assert _has(t, "not in the sample file")
    assert rows[odd_crops]["usable"] and rows[odd_crops]["crops_beyond"] == 1
    assert _has(rows[odd_crops], "1 crop file(s) not named")
    assert "1 crop file(s) past the frame axis" in out
    assert sum(r["usable"] for r in rows.values()) == len(rows) - 3


def test_cli_on_a_missing_release_exits_2(tmp_path, capsys):
    cfg = load_config("configs/test.yaml", [f"data.root={tmp_path / 'nothing'}", f"cache_root={tmp_path}"])
    assert cli_data(cfg, argparse.Namespace()) == 2
    assert "not a folder" in capsys.readouterr().err


def _copy_release(synth_release, tmp_path) -> tuple[Path, object]:
    src = tmp_path / "rel"
    shutil.copytree(synth_release, src, copy_function=os.link)  # hard links: cheap; unlink before editing
    cfg = load_config("configs/test.yaml", [f"data.root={src}", f"cache_root={tmp_path / 'cache'}"])
    return src, cfg


def test_only_official_crop_names_count_and_extraction_reads_the_same_frames(synth_release, traps, tmp_path):
    from abaw.features.extract import crop_presence

    src, cfg = _copy_release(synth_release, tmp_path)
    subject = next(s for s, f in traps["subjects"].items() if not f["missing_crop_runs"])
    crops = src / "cropped_aligned" / subject
    # Frame 3 saved as "3.jpg", frame 5 as "0005.jpg": extraction reads only %05d.jpg, so both are
    # missing frames with an odd-file note, not faces the features would lack.
    os.rename(crops / "00003.jpg", crops / "3.jpg")
    os.rename(crops / "00005.jpg", crops / "0005.jpg")
    row = _rows(build_index(cfg))[subject]
    n = row["n_frames"]
    assert row["missing_crop_runs"] == [[2, 3], [4, 5]]
    assert row["crops_present"] == n - 2 and row["usable"]
    assert _has(row, "2 crop file(s) not named %05d.jpg (1-based), so never read: 0005.jpg, 3.jpg")
    present, misnamed = crop_presence(Path(row["crop_dir"]), n)
    expected = np.ones(n, bool)
    for s, e in row["missing_crop_runs"]:
        expected[s:e] = False
    np.testing.assert_array_equal(present, expected)
    assert misnamed == 2


def test_per_side_raw_videos_are_not_mixed_up(synth_release, traps, tmp_path):
    """A release with X_left.mp4 and X_right.mp4 but no X.mp4: each side is indexed with its own file."""
    src, cfg = _copy_release(synth_release, tmp_path)
    subs = traps["subjects"]
    left = next(s for s in subs if s.endswith("_left") and subs[s]["video_path"].endswith(".mp4"))
    video, right = subs[left]["video"], f"{subs[left]['video']}_right"
    other = next(s for s, f in subs.items() if f["video"] != video and f["video_path"].endswith(".mp4"))
    shared = src / subs[left]["video_path"]
    os.rename(shared, shared.with_name(f"{left}.mp4"))
    shutil.copy(src / subs[other]["video_path"], shared.with_name(f"{right}.mp4"))
    rows = _rows(build_index(cfg))
    for side, frames in ((left, subs[left]["decoded_frames"]), (right, subs[other]["decoded_frames"])):
        r = rows[side]
        assert r["video_path"] == str(shared.with_name(f"{side}.mp4")), r
        assert r["video"] == side and r["decoded_frames"] == frames
        assert _has(r, "raw video found under the subject's own name")


def test_test_subjects_without_crops_or_video_stay_usable_and_get_zero_features(
    synth_release, traps, tmp_path
):
    """The submission needs every frame of every listed test video: a test subject with no face crops (or
    no raw video) is still predicted, from zero features masked False, and `abaw data` does not fail."""
    import polars as pl

    from abaw.features.cache import FeatureCache
    from abaw.features.extract import extract_features

    src, cfg = _copy_release(synth_release, tmp_path)
    subs = traps["subjects"]
    plain = [
        s
        for s, f in subs.items()
        if f["split"] == "test" and sum(g["video"] == f["video"] for g in subs.values()) == 1
    ]
    no_crops, no_video = plain[:2]
    shutil.rmtree(src / "cropped_aligned" / no_crops)
    (src / subs[no_video]["video_path"]).unlink()
    result = build_index(cfg)
    rows = _rows(result)
    assert result.errors == []
    a, b = rows[no_crops], rows[no_video]
    assert a["usable"] and b["usable"]
    assert a["n_frames"] == subs[no_crops]["sample_rows"] and b["n_frames"] == subs[no_video]["sample_rows"]
    assert a["crops_present"] == 0 and a["missing_crop_runs"] == [[0, a["n_frames"]]]
    assert _has(a, "no crops at all") and "visual features are zeros" in " ".join(a["odd"])
    assert _has(b, "no raw video") and "audio features are zeros" in " ".join(b["odd"])
    assert b["frame_times"] is None and b["crops_present"] > 0

    table = result.table.filter(pl.col("subject").is_in([no_crops, no_video]))
    visual = extract_features(cfg, "visual", index=table)
    audio = extract_features(cfg, "audio", index=table)
    assert visual.ok and audio.ok and visual.complete and audio.complete
    feats, mask = FeatureCache(visual.cache_dir).load(no_crops)
    assert feats.shape[0] == a["n_frames"] and not mask.any() and not feats.any()
    feats, mask = FeatureCache(audio.cache_dir).load(no_video)
    assert feats.shape[0] == b["n_frames"] and not mask.any() and not feats.any()
    assert FeatureCache(visual.cache_dir).load(no_video)[1].sum() == b["crops_present"]
