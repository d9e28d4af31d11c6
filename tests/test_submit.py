"""Submission side: writer, independent validator, scorer, packaging and the submit orchestration."""

from __future__ import annotations

import ast
import csv
import importlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from abaw.submit.package import SubmissionExistsError, make_zip, read_index
from abaw.submit.score import ScoreError, score_submission
from abaw.submit.validate import check_submission, validate_submission
from abaw.submit.writer import HEADER, SubmissionWriteError, write_submission

ORDER = ["a", "b_left", "b_right", "c"]
COUNTS = {"a": 12, "b_left": 7, "b_right": 7, "c": 20}
# First line of each video in a correct file (the header is line 1).
FIRST = {"a": 2, "b_left": 14, "b_right": 21, "c": 28}


@pytest.fixture
def refs(tmp_path):
    """A release list and a sample file written by hand (not by the writer under test)."""
    release = tmp_path / "test_set_release.txt"
    release.write_text("\n".join(ORDER) + "\n")
    sample = tmp_path / "VA_test_set_sample.txt"
    rows = [f"{s}/{i:05d}.jpg,0,0" for s in ORDER for i in range(1, COUNTS[s] + 1)]
    sample.write_text("\n".join([HEADER] + rows) + "\n")
    return sample, release


@pytest.fixture
def preds():
    rng = np.random.default_rng(0)
    return {s: rng.uniform(-1, 1, (n, 2)).astype(np.float32) for s, n in COUNTS.items()}


@pytest.fixture
def good(tmp_path, preds):
    path = tmp_path / "predictions.txt"
    write_submission(path, preds, ORDER, COUNTS)
    return path


def _check(path, refs, **kw):
    sample, release = refs
    return check_submission(path, sample=sample, release=release, **kw)


# ---- writer ----------------------------------------------------------------------------------------------
def test_round_trip_matches_printf_and_validates(good, preds, refs):
    lines = good.read_text().splitlines()
    expected = [HEADER] + [
        f"{s}/{i + 1:05d}.jpg,{'%.6f' % float(v)},{'%.6f' % float(a)}"  # noqa: UP031 - printf is the spec
        for s in ORDER for i, (v, a) in enumerate(preds[s].astype(np.float64))
    ]  # fmt: skip
    assert lines == expected
    assert good.read_bytes().endswith(b"\n") and b"\r" not in good.read_bytes()
    report = _check(good, refs)
    assert report.valid, report.format()
    assert report.rows == sum(COUNTS.values())
    assert report.rows_per_subject == COUNTS
    assert validate_submission(good, *refs) == []


def test_padding_truncation_and_clipping_are_reported(tmp_path, preds, refs):
    p = dict(preds)
    p["a"] = preds["a"][:9]  # 3 short
    p["c"] = np.concatenate([preds["c"], np.full((4, 2), 0.5, np.float32)])  # 4 long
    p["b_left"] = preds["b_left"].copy()
    p["b_left"][2] = [1.5, -3.0]
    report = write_submission(tmp_path / "p.txt", p, ORDER, COUNTS)
    adj = {(x.subject, x.predicted, x.expected, x.action) for x in report.adjusted}
    assert adj == {("a", 9, 12, "padded"), ("c", 24, 20, "truncated")}
    assert report.clipped == 2
    assert report.rows_per_subject == COUNTS
    rows = list(csv.reader((tmp_path / "p.txt").read_text().splitlines()[1:]))
    a_rows = [r for r in rows if r[0].startswith("a/")]
    last = [f"{x:.6f}" for x in preds["a"][8].astype(np.float64)]
    assert [r[1:] for r in a_rows[8:]] == [last] * 4  # frames 9..12 repeat frame 9
    assert [r for r in rows if r[0] == "b_left/00003.jpg"][0][1:] == ["1.000000", "-1.000000"]
    assert _check(tmp_path / "p.txt", refs).valid
    assert any("padded 3" in line for line in report.summary_lines())


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p, o, c: p["b_left"].__setitem__((4, 1), np.nan), "b_left: non-finite prediction.*frame 5"),
        (lambda p, o, c: p.pop("c"), r"no predictions for 1 video.*'c'"),
        (lambda p, o, c: c.pop("a"), r"no row count for video\(s\) \['a'\]"),
        (lambda p, o, c: o.append("d,x"), "cannot appear in image_location"),
        (lambda p, o, c: o.append("a"), "lists video"),
        (lambda p, o, c: p.__setitem__("a", np.zeros((0, 2))), "a: no predicted frames"),
        (lambda p, o, c: p.__setitem__("a", np.zeros((12, 3))), r"shape \[N, 2\]"),
    ],
)
def test_writer_refuses_bad_input(tmp_path, preds, change, message):
    p, o, c = {k: v.copy() for k, v in preds.items()}, list(ORDER), dict(COUNTS)
    change(p, o, c)
    with pytest.raises(SubmissionWriteError, match=message):
        write_submission(tmp_path / "p.txt", p, o, c)
    assert not (tmp_path / "p.txt").exists()  # atomic: nothing half-written


def test_writer_ignores_and_reports_unlisted_videos(tmp_path, preds):
    p = dict(preds, extra=np.zeros((5, 2)))
    report = write_submission(tmp_path / "p.txt", p, ORDER, COUNTS)
    assert report.ignored == ["extra"]
    assert "extra/" not in (tmp_path / "p.txt").read_text()


# ---- validator: planted defects ------------------------------------------------------------------------
def _move(lines, lo, hi, to):
    block = lines[lo:hi]
    rest = lines[:lo] + lines[hi:]
    return rest[:to] + block + rest[to:]


def _set_value(i, text):
    def f(lines):
        lines[i] = lines[i].split(",")[0] + "," + text
        return lines

    return f


# (name, mutation of the file's lines (index 0 = line 1), {(kind, line)} that must be reported, all kinds)
DEFECTS = [
    ("wrong header", lambda L: ["image,valence,arousal"] + L[1:], {("header", 1)}, {"header"}),
    ("swapped columns", lambda L: ["image_location,arousal,valence"] + L[1:], {("header", 1)}, {"header"}),
    ("missing header", lambda L: L[1:], {("header", 1)}, {"header"}),
    ("missing frame", lambda L: L[:5] + L[6:], {("frame", 6), ("count", 12)}, {"frame", "count"}),
    ("extra frame", lambda L: L[:13] + ["a/00013.jpg,0.1,0.2"] + L[13:], {("count", 14)}, {"count"}),
    ("wrong order", lambda L: _move(L, 13, 20, 1), {("order", 9)}, {"order"}),
    ("NaN", _set_value(3, "nan,0.1"), {("not_finite", 4)}, {"not_finite"}),
    ("value 1.5", _set_value(3, "0.1,1.5"), {("range", 4)}, {"range"}),
    ("unknown video", lambda L: L[:27] + [x.replace("c/", "x/") for x in L[27:]],
     {("unknown_video", 28), ("missing_video", 48)}, {"unknown_video", "missing_video"}),
    ("duplicate row", lambda L: L[:4] + [L[3]] + L[4:], {("duplicate", 5), ("count", 2)}, {"duplicate", "count"}),
    ("wrong column count", lambda L: L[:6] + [L[6] + ",0.3"] + L[7:], {("columns", 7)}, {"columns"}),
    ("too few columns", lambda L: L[:6] + [L[6].rsplit(",", 1)[0]] + L[7:], {("columns", 7)}, {"columns"}),
    ("missing subject", lambda L: L[:20] + L[27:], {("missing_video", 21)}, {"missing_video"}),
    ("blank line", lambda L: L[:5] + [""] + L[5:], {("blank_line", 6)}, {"blank_line"}),
    ("bad frame name", lambda L: L[:7] + ["a/0007.jpg,0,0"] + L[8:], {("location", 8), ("frame", 9)},
     {"location", "frame", "count"}),
    ("not a number", _set_value(9, "0.1,abc"), {("number", 10)}, {"number"}),
    ("empty value", _set_value(9, ",0.1"), {("number", 10)}, {"number"}),
    ("rows swapped", lambda L: L[:4] + [L[5], L[4]] + L[6:], {("frame", 5), ("frame", 6)}, {"frame"}),
    ("video split in two", lambda L: _move(L, 10, 13, 17), {("repeated_block", 18), ("count", 10)},
     {"repeated_block", "count"}),
]  # fmt: skip


@pytest.mark.parametrize("name, mutate, must, kinds", DEFECTS, ids=[d[0] for d in DEFECTS])
def test_validator_catches_planted_defect(tmp_path, good, refs, name, mutate, must, kinds):
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(mutate(good.read_text().splitlines())) + "\n")
    report = _check(bad, refs)
    found = {(e.kind, e.line) for e in report.errors}
    assert must <= found, report.format()
    assert set(report.counts) == kinds, report.format()
    assert not report.valid
    assert all(str(e.line) in str(e) for e in report.errors if e.line)


def test_validator_windows_line_endings_and_missing_final_newline(tmp_path, good, refs):
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(good.read_bytes().replace(b"\n", b"\r\n"))
    report = _check(crlf, refs)
    assert set(report.counts) == {"line_ending"} and report.errors[0].line == 1
    no_newline = tmp_path / "nonl.txt"
    no_newline.write_bytes(good.read_bytes().rstrip(b"\n"))
    assert _check(no_newline, refs).valid


def test_validator_accepts_other_plain_numbers(tmp_path, good, refs):
    lines = good.read_text().splitlines()
    for i, text in enumerate(["1e-1,-.5", "+0.25,-1", "1.,0", "-0.000001,1.0000000000000000001"]):
        lines[2 + i] = lines[2 + i].split(",")[0] + "," + text
    (tmp_path / "x.txt").write_text("\n".join(lines) + "\n")
    report = _check(tmp_path / "x.txt", refs)
    assert report.valid, report.format()


def test_validator_counts_every_error_and_caps_what_it_keeps(tmp_path, good, refs):
    lines = good.read_text().splitlines()
    lines[1:] = [x.split(",")[0] + ",nan,2" for x in lines[1:]]
    (tmp_path / "x.txt").write_text("\n".join(lines) + "\n")
    n = sum(COUNTS.values())
    report = _check(tmp_path / "x.txt", refs, max_keep=7)
    assert report.counts == {"not_finite": n, "range": n}
    assert len(report.errors) == 14
    text = report.format(max_per_kind=3)
    assert f"and {n - 3} more [not_finite]" in text and text.count("[range]") == 4  # 3 shown + "more" line


def test_validator_without_references_checks_format_only(good, tmp_path):
    report = check_submission(good)
    assert report.valid and report.warnings
    lines = good.read_text().splitlines()
    (tmp_path / "x.txt").write_text("\n".join(lines[:5] + lines[6:]) + "\n")
    assert {(e.kind, e.line) for e in check_submission(tmp_path / "x.txt").errors} == {("frame", 6)}


def test_validator_refuses_unusable_references(tmp_path, good, refs):
    sample, release = refs
    broken = tmp_path / "broken_sample.txt"
    broken.write_text(HEADER + "\na/00001.jpg,0,0\na/00003.jpg,0,0\n")
    with pytest.raises(ValueError, match="sample file .* not a usable"):
        check_submission(good, sample=broken, release=release)
    with pytest.raises(FileNotFoundError):
        check_submission(tmp_path / "nope.txt", sample=sample, release=release)


def test_zip_passes_validate_and_bad_zips_do_not(tmp_path, good, refs):
    z = make_zip(good, tmp_path / "sub.zip")
    with zipfile.ZipFile(z) as zf:
        assert zf.namelist() == ["predictions.txt"]
    assert _check(z, refs).valid
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as zf:
        zf.write(good, "folder/predictions.txt")
        zf.writestr("notes.txt", "hi")
    report = _check(nested, refs)
    assert [e.kind for e in report.errors] == ["file", "file"]
    assert "exactly one" in str(report.errors[0]) + str(report.errors[1])


VALIDATOR = ("abaw.submit.validate", "abaw.submit.validate_scan", "abaw.submit.validate_report")


def _imports(module: str) -> set[str]:
    tree = ast.parse(Path(importlib.import_module(module).__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return imported | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def test_validator_is_independent_of_the_writer():
    for module in VALIDATOR:
        imported = _imports(module)
        own = {m for m in imported if m.startswith("abaw")} - set(VALIDATOR) - {"abaw.errors"}
        assert not own and not {m for m in imported if m.startswith(("polars", "numpy"))}, (module, imported)


def test_validator_is_split_along_its_seams_and_reads_with_csv():
    """Issue 10 item 17: references + check, line scanning, report are separate modules, and lines are
    split by the csv module rather than a hand-written byte-level parser."""
    sizes = {m: len(Path(importlib.import_module(m).__file__).read_text().splitlines()) for m in VALIDATOR}
    assert max(sizes.values()) < 350, sizes
    assert "csv" in _imports("abaw.submit.validate_scan")


def test_validator_quotes_and_lone_carriage_returns_are_plain_characters(tmp_path, good, refs):
    lines = good.read_text().splitlines()
    lines[3] = '"' + lines[3].replace(",", '",', 1)  # a quoted location: not the organisers' format
    lines[5] = lines[5].split(",")[0] + ",0.1\r,0.2"
    (tmp_path / "x.txt").write_bytes(("\n".join(lines) + "\n").encode())
    found = {(e.kind, e.line) for e in _check(tmp_path / "x.txt", refs).errors}
    assert {("location", 4), ("number", 6)} <= found, found


# ---- score -------------------------------------------------------------------------------------------------
def _ccc(x, y):
    mx, my = x.mean(), y.mean()
    return 2 * ((x - mx) * (y - my)).mean() / (x.var() + y.var() + (mx - my) ** 2)


@pytest.fixture
def truth(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "Test_Set"
    folder.mkdir()
    gold = {}
    for s, n in COUNTS.items():
        g = np.round(rng.uniform(-1, 1, (n, 2)), 3)
        g[n // 3: n // 3 + 3] = -5  # an unannotated run in the middle
        gold[s] = g
        (folder / f"{s}.txt").write_text("valence,arousal\n" + "".join(f"{v:.3f},{a:.3f}\n" for v, a in g))
    return folder, gold


def test_score_perfect_and_perturbed(tmp_path, truth):
    folder, gold = truth
    perfect = {s: np.where(g == -5, 0.0, g) for s, g in gold.items()}
    write_submission(tmp_path / "perfect.txt", perfect, ORDER, COUNTS)
    s = score_submission(tmp_path / "perfect.txt", folder)
    assert s["p_va"] == pytest.approx(1.0, abs=1e-9) and s["ccc_v"] == pytest.approx(1.0, abs=1e-9)
    mask = {k: g[:, 0] != -5 for k, g in gold.items()}
    assert s["frames"] == sum(int(m.sum()) for m in mask.values())

    rng = np.random.default_rng(2)
    noisy = {k: np.clip(0.7 * v + 0.1 + rng.normal(0, 0.2, v.shape), -1, 1) for k, v in perfect.items()}
    write_submission(tmp_path / "noisy.txt", noisy, ORDER, COUNTS)
    s = score_submission(make_zip(tmp_path / "noisy.txt", tmp_path / "noisy.zip"), folder)
    # The file holds 6 decimals: score what was written, pooled over every annotated frame.
    p = np.concatenate([np.round(noisy[k], 6)[mask[k]] for k in ORDER])
    g = np.concatenate([gold[k][mask[k]] for k in ORDER])
    cv, ca = _ccc(p[:, 0], g[:, 0]), _ccc(p[:, 1], g[:, 1])
    assert s["ccc_v"] == pytest.approx(cv, abs=1e-6) and s["ccc_a"] == pytest.approx(ca, abs=1e-6)
    assert s["p_va"] == pytest.approx((cv + ca) / 2, abs=1e-6)


def test_score_refuses_swapped_header_and_missing_frames(tmp_path, truth, good):
    folder, _ = truth
    swapped = tmp_path / "swapped.txt"
    swapped.write_text(good.read_text().replace(HEADER, "image_location,arousal,valence", 1))
    with pytest.raises(ScoreError, match="header"):
        score_submission(swapped, folder)
    lines = good.read_text().splitlines()
    short = tmp_path / "short.txt"
    short.write_text("\n".join(lines[:-1]) + "\n")  # c loses its last (annotated) frame
    with pytest.raises(ScoreError, match="video c: no finite prediction for 1 annotated frame"):
        score_submission(short, folder)


# ---- orchestration and packaging -----------------------------------------------------------------------
def _fake_run(cfg, name, variant, mtime):
    from abaw.config import save_config, with_overrides

    run = cfg.release_cache / "runs" / name
    run.mkdir(parents=True, exist_ok=True)
    save_config(with_overrides(cfg, [f"model.variant={variant}"]), run / "config.yaml")
    (run / "best.ckpt").write_bytes(b"weights")
    (run / "summary.json").write_text(json.dumps({"metrics": {"p_va": 0.4, "p_va_post": 0.45}}))
    os.utime(run / "summary.json", (mtime, mtime))
    return run


@pytest.fixture
def submit_cfg(synth_cfg, tmp_path):
    from abaw.config import with_overrides

    cache = tmp_path / "cache"
    return with_overrides(synth_cfg, [f"cache_root={cache}", f"submit.out_dir={tmp_path / 'submissions'}"])


def test_find_runs_picks_latest_finished_run_of_the_model(submit_cfg):
    from abaw.submit.submission import SubmissionError, find_runs

    with pytest.raises(SubmissionError, match="no finished grjca_hier run"):
        find_runs(submit_cfg)
    _fake_run(submit_cfg, "old", "grjca_hier", 1_000)
    new = _fake_run(submit_cfg, "new", "grjca_hier", 2_000)
    _fake_run(submit_cfg, "other", "concat", 3_000)
    assert find_runs(submit_cfg) == [new]
    assert [r.name for r in find_runs(submit_cfg, ["old", str(new)])] == ["old", "new"]
    with pytest.raises(SubmissionError, match="not found"):
        find_runs(submit_cfg, ["missing"])


def test_submit_writes_validates_scores_and_lists(submit_cfg, monkeypatch, capsys):
    from abaw.data.annotations import read_annotations
    from abaw.data.index import load_index
    from abaw.submit import submission

    cfg = submit_cfg
    run = _fake_run(cfg, "grjca_hier-official", "grjca_hier", 1_000)
    table = load_index(cfg).table
    test = {r["subject"]: r["n_frames"] for r in table.iter_rows(named=True) if r["split"] == "test"}
    truth = cfg.data_root / "ground_truth" / "Test_Set"
    short = sorted(test)[0]

    def fake_predict(cfg_, run_dirs, table_):
        assert run_dirs == [run.resolve()]
        out = {}
        for s, n in test.items():
            ann = read_annotations(truth / f"{s}.txt")
            values = np.where(ann.valid[:, None], ann.values, 0.0)[:n]
            out[s] = values[: n - 2] if s == short else values  # two frames short: padded and reported
        return out, {"smooth": "mean", "windows": [5, 9]}

    summaries = [{"run": str(run), "checkpoint": str(run / "best.ckpt"), "val": {"p_va": 0.4, "p_va_post": 0.45},
                  "features": {"visual": {"name": "resnet18-abc", "manifest_sha256": "123"}}, "postprocess": None}]
    monkeypatch.setattr(submission, "_predict", fake_predict)
    monkeypatch.setattr(submission, "_run_summaries", lambda dirs: summaries)

    folder = submission.submit(cfg, name="demo-1")
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["config.yaml", "demo-1.zip", "metadata.json", "predictions.txt"]
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["validation"]["valid"] and meta["rows"] == sum(test.values())
    assert meta["length_adjustments"] == [
        {"subject": short, "predicted": test[short] - 2, "expected": test[short], "action": "padded"}]
    assert meta["test_score"]["p_va"] > 0.99  # the truth, bar two padded frames
    assert meta["feature_caches"] == {"visual": [{"name": "resnet18-abc", "manifest_sha256": "123"}]}
    assert meta["postprocess"] == {"smooth": "mean", "windows": [5, 9]}
    assert meta["val_p_va_mean"] == pytest.approx(0.45) and meta["code_version"]
    assert meta["config"]["submit"]["out_dir"] == cfg.submit.out_dir
    assert set(meta["row_count_source"].values()) == {"sample"}
    assert check_submission(folder / "demo-1.zip").valid

    index = read_index(folder.parent)
    assert [r["name"] for r in index] == ["demo-1"]
    assert index[0]["runs"] == "grjca_hier-official" and float(index[0]["test_p_va"]) > 0.99
    assert index[0]["val_p_va"] == "0.4500" and index[0]["zip"] == "demo-1/demo-1.zip"

    with pytest.raises(SubmissionExistsError):
        submission.submit(cfg, name="demo-1")
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".staging")]

    class Args:
        runs = None
        name = "demo-2"

    # A submission scored against another release's truth is listed, but never ranked with these.
    from abaw.submit.package import INDEX, _index_text

    foreign = {**index[0], "name": "other-release", "test_p_va": "0.9999", "test_truth": "0" * 16}
    (folder.parent / INDEX).write_text(_index_text(index + [foreign]))
    assert index[0]["test_truth"] == meta["test_score"]["truth_digest"]
    assert submission.cli_submit(cfg, Args()) == 0
    out = capsys.readouterr().out
    assert "Leaderboard" in out and "demo-2  " in out and "<-" in out and "padded" in out
    board = out[out.index("Leaderboard"):]
    assert "demo-1" in board and "other-release" not in board
    assert [r["name"] for r in read_index(folder.parent)] == ["demo-1", "other-release", "demo-2"]


def test_submit_takes_test_order_and_row_counts_from_the_index(submit_cfg, monkeypatch):
    """Issue 10.15: the references are the index's test rows (order and frame axis), not a second
    reading of the release list and sample file."""
    import abaw.data.release as release
    from abaw.data.index import load_index
    from abaw.submit.submission import SubmissionError, test_references

    table = load_index(submit_cfg).table
    test = table.filter(pl.col("split") == "test")
    first = test["subject"][0]

    def no_rereading(*a, **k):
        raise AssertionError("the release list / sample file was read again")

    monkeypatch.setattr(release, "read_sample_counts", no_rereading)
    monkeypatch.setattr(release, "read_release_list", no_rereading)
    changed = table.with_columns(pl.when(pl.col("subject") == first).then(pl.col("n_frames") + 7)
                                 .otherwise(pl.col("n_frames")).alias("n_frames"))
    refs = test_references(submit_cfg, changed)
    assert refs.order == test["subject"].to_list()
    assert refs.counts[first] == test["n_frames"][0] + 7
    assert refs.count_source[first] == ("sample" if test["sample_rows"][0] is not None else "container")
    broken = table.with_columns(pl.when(pl.col("subject") == first).then(None).otherwise(pl.col("n_frames"))
                                .alias("n_frames"))
    with pytest.raises(SubmissionError, match=f"test subject {first} has no row count"):
        test_references(submit_cfg, broken)


def test_cli_validate_and_score(submit_cfg, good, refs, truth, tmp_path, capsys):
    import argparse

    from abaw.submit.score import cli_score
    from abaw.submit.validate import cli_validate

    sample, release = refs
    args = argparse.Namespace(submission=str(good), sample=str(sample), release=str(release))
    assert cli_validate(submit_cfg, args) == 0
    assert "VALID" in capsys.readouterr().out
    lines = good.read_text().splitlines()
    (tmp_path / "bad.txt").write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    args.submission = str(tmp_path / "bad.txt")
    assert cli_validate(submit_cfg, args) == 1
    assert "line 4: [frame] missing frame 00003 of video a" in capsys.readouterr().out
    args.sample = str(tmp_path / "nope.txt")
    assert cli_validate(submit_cfg, args) == 2

    folder, _ = truth
    assert cli_score(submit_cfg, argparse.Namespace(submission=str(good), truth=str(folder))) == 0
    assert "P_VA" in capsys.readouterr().out
