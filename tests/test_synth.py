"""The synthetic release: official layout, deterministic, every planted trap really in the files, labels
sampled at the decoded timestamps, audio on time, and the hidden signal present in face and voice."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from abaw.synth import generate as synth
from abaw.synth import plan as synth_plan
from abaw.synth.media import decode_audio, decode_frames

TRAP_KINDS = {
    "low_fps", "wrong_fps_in_name", "variable_frame_rate", "stream_start_offset", "left_right",
    "missing_crops_start", "missing_crops_middle", "unlabelled_middle", "label_rows_more",
    "label_rows_fewer", "no_audio", "test_count_mismatch", "avi_video", "odd_label_file",
}  # fmt: skip
TINY = 0.1  # for the releases this module generates itself (the shared fixture is 0.25)


def _meta(root: Path) -> dict:
    return json.loads((root / synth.MARKER).read_text())


def _label_path(root: Path, subject: str, split: str) -> Path:
    if split == "test":
        return root / "ground_truth" / "Test_Set" / f"{subject}.txt"
    return root / synth.ANNOTATIONS / synth.SPLIT_DIRS[split] / f"{subject}.txt"


def _read_labels(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    assert lines[0] == "valence,arousal", path
    return np.array([[float(x) for x in ln.split(",")] for ln in lines[1:] if ln.strip()])


def _plans(meta: dict) -> dict[str, tuple[synth_plan.VideoPlan, synth_plan.PersonPlan]]:
    videos, _ = synth_plan.plan_release(meta["seed"], meta["scale"])
    return {p.subject: (v, p) for v in videos for p in v.persons}


@pytest.fixture(scope="module")
def twin_releases(tmp_path_factory):
    """Two releases from the same seed (tiny scale)."""
    base = tmp_path_factory.mktemp("twins")
    a = synth.generate(base / "a", seed=3, scale=TINY)
    b = synth.generate(base / "b", seed=3, scale=TINY, workers=2)  # the process pool gives the same bytes
    return a, b


# ---- plan -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.05, 0.25, 1.0, 10.0])
def test_plan_has_every_trap_and_split_at_any_scale(scale):
    videos, traps = synth_plan.plan_release(0, scale)
    subjects = [p for v in videos for p in v.persons]
    assert {t.kind for t in traps} >= TRAP_KINDS
    assert {p.split for p in subjects} == {"train", "val", "test"}
    assert len({p.subject for p in subjects}) == len(subjects)
    assert len({v.stem for v in videos}) == len(videos)
    assert all(len(v.pts) >= 80 for v in videos)
    if scale == 1.0:
        assert 17 <= len(subjects) <= 20
        assert 14_000 <= sum(len(v.pts) * len(v.persons) for v in videos) <= 22_000


@pytest.mark.parametrize(
    ("seed", "scale", "what"), [(0, 0, "scale"), (0, float("nan"), "scale"), (-1, 1, "seed")]
)
def test_plan_rejects_bad_arguments(seed, scale, what):
    with pytest.raises(ValueError, match=what):
        synth_plan.plan_release(seed, scale)


# ---- layout -----------------------------------------------------------------------------------------
def test_official_layout(synth_release):
    root = synth_release
    meta = _meta(root)
    subjects = meta["subjects"]
    for split, folder in synth.SPLIT_DIRS.items():
        files = sorted(p.stem for p in (root / synth.ANNOTATIONS / folder).glob("*.txt"))
        assert files == sorted(s for s, x in subjects.items() if x["split"] == split) and files
    tests = [s for s, x in subjects.items() if x["split"] == "test"]
    listed = (root / synth.TEST_LIST).read_text().splitlines()
    assert sorted(listed) == sorted(tests) and listed
    # Test subjects have crops and videos, but no annotation in the release (only in ground_truth).
    assert not [p for p in (root / synth.ANNOTATIONS).rglob("*.txt") if p.stem in tests]

    sample = (root / synth.SAMPLE_FILE).read_text().splitlines()
    assert sample[0] == "image_location,valence,arousal"
    order, counts = [], {}
    for row in sample[1:]:
        loc, v, a = row.split(",")
        subject, frame = loc.split("/")
        assert (v, a) == ("0", "0")
        if not order or order[-1] != subject:
            order.append(subject)
        counts[subject] = counts.get(subject, 0) + 1
        assert frame == f"{counts[subject]:05d}.jpg"  # 1..N, contiguous
    assert order == listed
    assert all(counts[s] == subjects[s]["sample_rows"] for s in tests)

    for subject, info in subjects.items():
        video = root / info["video_path"]
        assert video.parent.name in ("batch1", "batch2") and video.suffix in (".mp4", ".avi")
        stem = subject.removesuffix("_left").removesuffix("_right")
        assert video.stem == stem == info["video"]
        crops = sorted((root / "cropped_aligned" / subject).glob("*.jpg"))
        assert crops
        with Image.open(crops[0]) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (112, 112))
    pairs = [s for s in subjects if s.endswith("_left")]
    assert pairs and all(
        subjects[s]["video_path"] == subjects[s.replace("_left", "_right")]["video_path"] for s in pairs
    )
    assert {Path(x["video_path"]).parent.name for x in subjects.values()} == {"batch1", "batch2"}
    assert any(not s[0].isdigit() for s in subjects)  # plain names such as video23 too
    leftovers = [p for p in root.parent.glob(f".{root.name}.*") if p.suffix != ".lock"]
    assert not leftovers  # no temporary folder left behind


# ---- traps: recorded in traps.json and true in the files --------------------------------------------
def test_every_trap_is_planted_and_true(synth_release):
    root = synth_release
    meta = _meta(root)
    subjects = meta["subjects"]
    kinds = {}
    for t in meta["traps"]:
        kinds.setdefault(t["kind"], []).append(t["subject"])
        assert t["subject"] in subjects and t["detail"]
    assert set(kinds) >= TRAP_KINDS
    rates, codecs = set(), set()

    for subject, info in subjects.items():
        path = root / info["video_path"]
        with av.open(str(path)) as c:
            vs = c.streams.video[0]
            pts = sorted(p.pts * vs.time_base for p in c.demux(vs) if p.size)
        with av.open(str(path)) as c:
            audio = c.streams.audio
            assert bool(audio) == info["has_audio"], subject
            if audio:
                assert audio[0].codec_context.sample_rate == info["audio_rate"]
                assert audio[0].codec_context.name.startswith(info["audio_codec"]), subject
                rates.add(info["audio_rate"])
                codecs.add(info["audio_codec"])
        times = np.array([float(t) for t in pts])
        assert len(times) == info["decoded_frames"], subject
        assert times[0] == pytest.approx(info["first_video_pts_s"], abs=1e-9)
        fps = (len(times) - 1) / (times[-1] - times[0])
        assert fps == pytest.approx(info["fps_nominal"], rel=1e-4), subject
        dur = np.diff(times)
        assert (np.ptp(dur) > 1e-3) == info["vfr"], subject

        n_axis = info["label_rows"] if info["split"] != "test" else info["sample_rows"]
        labels = _read_labels(_label_path(root, subject, info["split"]))
        assert len(labels) == n_axis, subject
        unlabelled = np.all(labels == -5, axis=1)
        assert synth._mask_runs(unlabelled) == info["unlabelled_runs"], subject
        assert np.all(np.abs(labels[~unlabelled]) <= 1) and not np.any((labels == -5).sum(1) == 1)
        crop_dir = root / "cropped_aligned" / subject
        have = np.zeros(n_axis, bool)
        for f in crop_dir.glob("*.jpg"):
            have[int(f.stem) - 1] = True  # also fails (IndexError) for a crop beyond the axis
        assert synth._mask_runs(~have) == info["missing_crop_runs"], subject

    def one(kind):
        return [subjects[s] | {"subject": s} for s in kinds[kind]]

    assert all(x["fps_nominal"] <= 15 for x in one("low_fps"))
    assert all(x["fps_in_name"] != round(x["fps_nominal"]) for x in one("wrong_fps_in_name"))
    assert all(str(x["fps_in_name"]) == x["video"].split("-")[1] for x in one("wrong_fps_in_name"))
    assert all(x["vfr"] for x in one("variable_frame_rate"))
    assert all(x["first_video_pts_s"] >= 0.4 and x["has_audio"] for x in one("stream_start_offset"))
    assert all(x["missing_crop_runs"][0][0] == 0 for x in one("missing_crops_start"))
    assert all(any(0 < s and e < x["decoded_frames"] for s, e in x["missing_crop_runs"])
               for x in one("missing_crops_middle"))  # fmt: skip
    assert all(
        any(0 < s and e < x["label_rows"] for s, e in x["unlabelled_runs"]) for x in one("unlabelled_middle")
    )
    assert all(
        x["label_rows"] in (x["decoded_frames"] + 1, x["decoded_frames"] + 2) for x in one("label_rows_more")
    )
    assert all(x["label_rows"] < x["decoded_frames"] for x in one("label_rows_fewer"))
    assert all(not x["has_audio"] for x in one("no_audio"))
    assert all(
        x["split"] == "test" and x["sample_rows"] != x["decoded_frames"] for x in one("test_count_mismatch")
    )
    assert all(x["video_path"].endswith(".avi") for x in one("avi_video"))
    assert {x["audio_codec"] for x in one("avi_video")} >= {"mp3", "pcm_s16le"}
    assert len(one("left_right")) == 2
    assert rates >= {16000, 22050, 44100, 48000} and "aac" in codecs
    for x in one("odd_label_file"):
        raw = _label_path(root, x["subject"], x["split"]).read_bytes()
        assert b"\r\n" in raw and raw.endswith(b"\r\n\r\n")
    assert any(x["face_uninformative_runs"] for x in subjects.values())
    assert any(x["audio_uninformative_runs"] for x in subjects.values())


# ---- time: labels at the decoded timestamps, audio where the container says ------------------------
def test_labels_are_the_hidden_signal_at_decoded_timestamps(synth_release):
    meta = _meta(synth_release)
    plans = _plans(meta)
    for subject, info in meta["subjects"].items():
        video, person = plans[subject]
        times, _ = decode_frames(synth_release / info["video_path"])
        np.testing.assert_array_equal(times, video.times)  # PyAV reads back the planned pts
        labels = _read_labels(_label_path(synth_release, subject, info["split"]))
        n = min(len(times), len(labels))
        ok = labels[:n, 0] != -5
        truth = person.emotion.at(times[:n])
        np.testing.assert_allclose(labels[:n][ok], truth[ok], atol=6e-4, err_msg=subject)
        # A pipeline that trusts the name's fps (or ignores the start offset) would be visibly off.
        name_fps = info["fps_in_name"] or 30
        if name_fps != round(info["fps_nominal"]) or info["first_video_pts_s"] > 0:
            naive = person.emotion.at(np.arange(n) / name_fps)
            assert np.abs(naive[ok] - labels[:n][ok]).max() > 0.05


def test_audio_lands_where_the_container_says(synth_release):
    """Decoded audio (frame.pts * time_base + k / rate) equals the intended signal within 1 ms, for AAC
    in mp4 (encoder priming), mp3 in AVI (delay compensated) and PCM."""
    meta = _meta(synth_release)
    seen = set()
    for video, _ in {v.stem: (v, p) for v, p in _plans(meta).values()}.values():
        if video.stream.acodec is None:
            continue
        start, sr, x = decode_audio(synth_release / video.relpath)
        assert start == 0.0 and sr == video.stream.audio_rate
        ref = synth._make_audio(video, video.times)  # what the encoder was fed
        lead = synth.media.MP3_DELAY_SAMPLES if video.stream.acodec == "libmp3lame" else 0
        # ref[j] was meant for time (lead + j) / sr; x[m] plays at start + m / sr.
        seg = slice(sr, 3 * sr)
        want = ref[seg]
        lags = np.arange(-int(0.02 * sr), int(0.02 * sr) + 1)
        score = [np.dot(x[lead + sr + L : lead + 3 * sr + L], want) for L in lags]
        best = lags[int(np.argmax(score))]
        assert abs(best) / sr <= 0.001, (video.relpath, best)
        seen.add(video.stream.acodec)
    assert seen >= {"aac", "libmp3lame", "pcm_s16le"}


# ---- the hidden signal ------------------------------------------------------------------------------
def _informative(info: dict, n: int, key: str) -> np.ndarray:
    m = np.ones(n, bool)
    for s, e in info[key]:
        m[s:e] = False
    return m


def test_voice_loudness_follows_arousal(synth_release):
    meta = _meta(synth_release)
    r_a, r_v = [], []
    for subject, info in meta["subjects"].items():
        if not info["has_audio"]:
            continue
        start, sr, x = decode_audio(synth_release / info["video_path"])
        labels = _read_labels(_label_path(synth_release, subject, info["split"]))
        times, _ = decode_frames(synth_release / info["video_path"])
        n = min(len(times), len(labels))
        sel = (labels[:n, 0] != -5) & _informative(info, n, "audio_uninformative_runs")
        # Loudness (dB) of the second of audio around each frame.
        c = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
        lo = np.clip(((times[:n] - start - 0.5) * sr).astype(int), 0, len(x) - 1)
        hi = np.clip(((times[:n] - start + 0.5) * sr).astype(int), 1, len(x))
        db = 10 * np.log10((c[hi] - c[lo]) / np.maximum(hi - lo, 1) + 1e-12)
        r_a.append(np.corrcoef(db[sel], labels[:n][sel, 1])[0, 1])
        r_v.append(np.corrcoef(db[sel], labels[:n][sel, 0])[0, 1])
    assert np.mean(r_a) > 0.6, r_a
    assert np.mean(r_a) > np.mean(np.abs(r_v)) + 0.3, (r_a, r_v)


def test_mouth_shows_valence(synth_release):
    """In the mouth area, teeth (bright, grey) show when happy and a dark gap when unhappy: their
    balance tracks valence in every subject."""
    meta = _meta(synth_release)
    r_v = []
    for subject, info in meta["subjects"].items():
        labels = _read_labels(_label_path(synth_release, subject, info["split"]))
        feats, vals = [], []
        ok = _informative(info, len(labels), "face_uninformative_runs")
        for f in sorted((synth_release / "cropped_aligned" / subject).glob("*.jpg")):
            i = int(f.stem) - 1
            if labels[i, 0] == -5 or not ok[i]:
                continue
            mouth = np.asarray(Image.open(f), np.int16)[64:104, 28:84]
            teeth = (mouth.min(-1) > 170) & (np.ptp(mouth, axis=-1) < 45)
            gap = mouth.max(-1) < 95
            feats.append(teeth.mean() - gap.mean())
            vals.append(labels[i, 0])
        r_v.append(np.corrcoef(feats, vals)[0, 1])
    assert min(r_v) > 0.6 and np.mean(r_v) > 0.75, r_v


# ---- determinism, reuse, force, CLI ------------------------------------------------------------------
def _digest_tree(root: Path, pattern: str) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob(pattern))
        if p.is_file()
    }


def test_same_seed_same_release(twin_releases):
    a, b = twin_releases
    for pattern in ("*.txt", "*.jpg", "traps.json"):
        da, db = _digest_tree(a, pattern), _digest_tree(b, pattern)
        assert da and da == db, pattern
    for video in sorted(p.relative_to(a) for p in a.glob("batch*/*")):
        ta, fa = decode_frames(a / video)
        tb, fb = decode_frames(b / video)
        np.testing.assert_array_equal(ta, tb)
        np.testing.assert_array_equal(fa, fb)
        aa, ab = decode_audio(a / video), decode_audio(b / video)
        assert (aa is None) == (ab is None)
        if aa is not None:
            np.testing.assert_array_equal(aa[2], ab[2])


def test_other_seed_other_release():
    (va, _), (vb, _) = synth_plan.plan_release(3, TINY), synth_plan.plan_release(4, TINY)
    t = np.linspace(0, 10, 50)
    assert [v.stem for v in va] != [v.stem for v in vb]
    assert not np.allclose(va[0].persons[0].emotion.at(t), vb[0].persons[0].emotion.at(t))


def test_complete_release_is_reused_and_force_rebuilds(twin_releases):
    a = twin_releases[0]
    marker = a / synth.MARKER
    before = marker.stat().st_mtime_ns
    assert synth.generate(a, seed=3, scale=TINY) == a
    assert marker.stat().st_mtime_ns == before
    labels = _digest_tree(a, "*.txt")
    synth.generate(a, seed=3, scale=TINY, force=True)
    assert marker.stat().st_mtime_ns != before
    assert _digest_tree(a, "*.txt") == labels
    leftovers = [p for p in a.parent.iterdir() if p.name.startswith(f".{a.name}.") and p.suffix != ".lock"]
    assert not leftovers  # neither the temporary folder nor the replaced release remains


def test_refuses_to_overwrite_a_folder_that_is_not_a_synthetic_release(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a synthetic release"):
        synth.generate(out, seed=0, scale=TINY)
    assert (out / "precious.txt").exists()


def test_cli_synth_uses_config_defaults_and_prints_a_summary(twin_releases, capsys):
    from abaw.config import Config

    cfg = Config()
    cfg.data.root = str(twin_releases[0])
    cfg.synth.seed, cfg.synth.scale = 3, TINY
    args = argparse.Namespace(out=None, seed=None, scale=None, force=False)
    assert synth.cli_synth(cfg, args) == 0  # same seed and scale: reuses the release
    out = capsys.readouterr().out
    assert "train" in out and "test" in out and "frames" in out and "already complete" in out


def test_a_killed_run_leaves_no_half_release(tmp_path, monkeypatch):
    out = tmp_path / "rel"
    (tmp_path / ".rel.tmp-99999").mkdir()  # debris of a run killed earlier

    def killed_midway(videos, root, workers, *settings):
        (root / "cropped_aligned").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "_write_media", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        synth.generate(out, seed=0, scale=TINY)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == [".rel.lock"]


# ---- what the face carries ----------------------------------------------------------------------------
def _face_measures(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per informative labelled crop of ``root``: (valence, subject index, mean intensity of the face, of
    the mouth region, and a mouth-shape measure: how much lower the mouth's marks sit at its centre than
    at its corners, in head radii). Regions come from each subject's planned look, wide enough for any
    head sway."""
    meta = _meta(root)
    plans = _plans(meta)
    out = []
    for k, (subject, info) in enumerate(meta["subjects"].items()):
        app = plans[subject][1].appearance
        yy, xx = np.mgrid[0 : synth.media.CROP, 0 : synth.media.CROP]
        u, w = (xx - app.cx) / app.radius, (yy - app.cy) / app.radius
        head = (u / 0.82) ** 2 + (w / 1.02) ** 2 < 0.8
        mouth = head & (np.abs(u) < 0.55) & (w > 0.1) & (w < 0.95)
        centre, corner = mouth & (np.abs(u) < 0.15), mouth & (np.abs(u) > 0.3) & (np.abs(u) < 0.45)
        labels = _read_labels(_label_path(root, subject, info["split"]))
        ok = _informative(info, len(labels), "face_uninformative_runs")
        for f in sorted((root / "cropped_aligned" / subject).glob("*.jpg")):
            i = int(f.stem) - 1
            if i >= len(labels) or labels[i, 0] == -5 or not ok[i]:
                continue
            img = np.asarray(Image.open(f), np.float64)
            grey = img.mean(-1)
            skin = np.median(img[mouth], axis=0)
            marks = np.abs(img - skin).sum(-1) > 45  # lips and the gap, not skin
            height = [(w[m & marks]).mean() if (m & marks).any() else np.nan for m in (centre, corner)]
            out.append((labels[i, 0], k, grey[head].mean(), grey[mouth].mean(), height[0] - height[1]))
    v, s, face, mouth_mean, shape = np.array(out).T
    return v, s.astype(int), face, mouth_mean, shape


@pytest.fixture(scope="module", params=["curve", "wild", "shape"])
def cue_release(request, tmp_path_factory):
    """(face_cues, a tiny release generated with it)."""
    root = tmp_path_factory.mktemp(request.param.replace("+", "_")) / "rel"
    return request.param, synth.generate(root, seed=5, scale=TINY, face_cues=request.param)


def test_curve_faces_carry_valence_in_geometry_only(cue_release):
    """face_cues=curve (and "wild"): neither the face's nor the mouth region's brightness follows valence,
    while the mouth's curvature does. "shape" keeps a brightness cue (teeth when happy, a dark gap when unhappy,
    an opening that grows with |valence|): the measure finds it there, which is why "curve" exists.

    Brightness is compared within subjects (z-scored per subject, as the pipeline normalises features per
    video): across a handful of subjects, skin tone and mean valence correlate by chance."""
    cues, root = cue_release
    v, s, face, mouth, shape = _face_measures(root)
    assert len(v) > 200

    def z(x):
        return np.concatenate([(x[s == k] - x[s == k].mean()) / (x[s == k].std() + 1e-9) for k in set(s)])

    vz = np.concatenate([v[s == k] for k in set(s)])
    r_face, r_mouth = np.corrcoef(z(face), vz)[0, 1], np.corrcoef(z(mouth), vz)[0, 1]
    ok = ~np.isnan(shape)
    r_shape = np.corrcoef(shape[ok], v[ok])[0, 1]
    if cues == "curve":
        assert abs(r_face) < 0.15 and abs(r_mouth) < 0.15, (r_face, r_mouth)
        assert ok.mean() > 0.95 and r_shape > 0.9, (ok.mean(), r_shape)
    elif cues == "wild":  # the same geometry, smaller, measured through the moving head and light
        assert abs(r_face) < 0.15 and abs(r_mouth) < 0.15, (r_face, r_mouth)
        assert ok.mean() > 0.9 and r_shape > 0.4, (ok.mean(), r_shape)
    else:
        assert r_mouth > 0.5, r_mouth


# ---- complementarity on demand: degraded face and voice runs -----------------------------------------
STRONG = {"face_degraded": 0.4, "face_kinds": ["occluded", "blurred", "missing"],
          "voice_degraded": 0.4, "voice_kinds": ["silence", "noise", "speaker"], "degrade_run_s": 1.0}


@pytest.fixture(scope="module")
def degraded_twins(tmp_path_factory):
    """The same seed and scale, undegraded and strongly degraded."""
    base = tmp_path_factory.mktemp("degraded")
    clean = synth.generate(base / "clean", seed=5, scale=TINY)
    deg = synth.generate(base / "strong", seed=5, scale=TINY, degradation=STRONG)
    return clean, deg


def _frame_mask(n: int, runs: list, kind: str | None = None) -> np.ndarray:
    m = np.zeros(n, bool)
    for s, e, k in runs:
        if kind is None or k == kind:
            m[s:e] = True
    return m


def test_degradation_is_recorded_and_only_adds_runs(degraded_twins):
    clean, deg = degraded_twins
    mc, md = _meta(clean), _meta(deg)
    assert mc["degradation"] == {} and md["degradation"] == STRONG
    assert set(mc["subjects"]) == set(md["subjects"])
    fractions = {"visual": [], "audio": []}
    for subject, info in md["subjects"].items():
        n = info["label_rows"] or info["sample_rows"]
        # Labels are the same: degradation changes the media, never the emotion.
        assert _read_labels(_label_path(deg, subject, info["split"])).tolist() == \
            _read_labels(_label_path(clean, subject, info["split"])).tolist()
        assert _frame_mask(n, info["degraded"]["visual"], "missing").tolist() == \
            _frame_mask(n, [[s, e, "m"] for s, e in info["missing_crop_runs"]]).tolist()
        for m in ("visual", "audio"):
            was = _frame_mask(n, mc["subjects"][subject]["degraded"][m])
            now = _frame_mask(n, info["degraded"][m])
            assert not (was & ~now).any(), (subject, m)  # the planted traps stay
            if info["has_audio"] or m == "visual":
                fractions[m].append(now.mean())
    # About the asked-for fraction on top of the traps, per modality.
    assert 0.35 < np.mean(fractions["visual"]) < 0.6
    assert 0.35 < np.mean(fractions["audio"]) < 0.6
    # Drawn independently: the face and voice runs are not the same runs.
    assert any(info["degraded"]["visual"] != info["degraded"]["audio"] for info in md["subjects"].values())


def test_degraded_face_is_in_the_crops(degraded_twins):
    """Read the crops back: occluded and blurred frames differ from the clean release's, clean frames
    are byte-identical, and blurred crops lose their fine detail."""
    clean, deg = degraded_twins
    md, mc = _meta(deg), _meta(clean)
    seen = set()
    for subject, info in md["subjects"].items():
        n = info["label_rows"] or info["sample_rows"]
        bad = _frame_mask(n, info["degraded"]["visual"])
        trap = _frame_mask(n, mc["subjects"][subject]["degraded"]["visual"])  # already in the clean release
        for s, e, kind in info["degraded"]["visual"]:
            if kind == "missing":
                continue
            seen.add(kind)
            for i in [i for i in range(s, min(e, info["decoded_frames"])) if not trap[i]][::7]:
                name = f"{i + 1:05d}.jpg"
                a = np.asarray(Image.open(clean / "cropped_aligned" / subject / name), np.float32)
                b = np.asarray(Image.open(deg / "cropped_aligned" / subject / name), np.float32)
                assert np.abs(a - b).mean() > 4, (subject, i, kind)
                if kind == "blurred":
                    detail = lambda x: np.abs(np.diff(x, axis=0)).mean()  # noqa: E731
                    assert detail(b) < 0.5 * detail(a), (subject, i)
        ok = [i for i in range(min(n, info["decoded_frames"])) if not bad[i]][::25]
        for i in ok:
            name = f"{i + 1:05d}.jpg"
            assert (clean / "cropped_aligned" / subject / name).read_bytes() == \
                (deg / "cropped_aligned" / subject / name).read_bytes(), (subject, i)
    assert seen == {"occluded", "blurred"}


def test_degraded_voice_is_in_the_soundtrack(degraded_twins):
    """Decode both soundtracks: silence runs are quiet, noise runs loud, a second speaker's runs differ
    from the clean voice, and outside the runs the two soundtracks agree."""
    clean, deg = degraded_twins
    md = _meta(deg)
    seen = set()
    mc = _meta(clean)
    for subject, info in {x["video"]: (s, x) for s, x in md["subjects"].items()}.values():
        if not info["has_audio"]:
            continue
        _, sr, xc = decode_audio(clean / info["video_path"])
        _, _, xd = decode_audio(deg / info["video_path"])
        k = min(len(xc), len(xd))
        xc, xd = xc[:k].astype(np.float64), xd[:k].astype(np.float64)
        times = synth.media.demux_frame_times(deg / info["video_path"])
        n = len(times)
        trap = _frame_mask(n + 10, mc["subjects"][subject]["degraded"]["audio"])  # in the clean release too
        rms = lambda x, a, b: float(np.sqrt(np.mean(x[a:b] ** 2)) + 1e-9)  # noqa: E731
        for s, e, kind in info["degraded"]["audio"]:
            if e - s < 6 or e >= n or trap[s:e].any():
                continue
            a, b = int(times[s + 2] * sr), int(times[e - 2] * sr)
            seen.add(kind)
            ref = rms(xc, a, b)
            if kind == "silence":
                assert rms(xd, a, b) < 0.2 * ref, info["video"]
            elif kind == "noise":
                assert rms(xd, a, b) > 2 * ref, info["video"]
            else:
                assert rms(xd - xc, a, b) > 0.3 * ref, info["video"]
        good = ~_frame_mask(n + 10, info["degraded"]["audio"])
        good &= ~np.convolve(~good, np.ones(9), "same").astype(bool)  # away from run edges
        idx = np.flatnonzero(good[:n])
        if len(idx):
            sel = np.concatenate([np.arange(int(times[i] * sr), int(times[i] * sr) + sr // 50) for i in idx])
            sel = sel[sel < k]
            assert np.sqrt(np.mean((xd[sel] - xc[sel]) ** 2)) < 0.05 * np.sqrt(np.mean(xc[sel] ** 2))
    assert seen == {"silence", "noise", "speaker"}


def test_release_of_other_degradation_is_not_reused(tmp_path):
    out = synth.generate(tmp_path / "r", seed=1, scale=0.05)
    assert synth._is_complete(out, 1, 0.05)
    assert not synth._is_complete(out, 1, 0.05, {"face_degraded": 0.2, "voice_degraded": 0.0})
    assert synth._is_complete(out, 1, 0.05, {"face_degraded": 0.0, "voice_degraded": 0.0})


def test_wild_pose_track_is_smooth_bounded_and_joins_across_blocks():
    """The "wild" head, light and eyelids are a function of (person, time): frames rendered in separate
    blocks join up, every track stays in its range, and the eyes are shut a few percent of the time."""
    t = np.arange(0, 60, 1 / 30)
    whole = synth.media.pose_track(3, t)
    halves = [synth.media.pose_track(3, t[:900]), synth.media.pose_track(3, t[900:])]
    for key, track in whole.items():
        np.testing.assert_array_equal(track, np.concatenate([h[key] for h in halves]), err_msg=key)
    assert np.abs(whole["yaw"]).max() <= synth.media.WILD_YAW + 1e-6
    assert np.abs(whole["roll"]).max() <= synth.media.WILD_ROLL + 1e-4
    assert np.abs(whole["scale"] - 1).max() <= synth.media.WILD_SCALE + 1e-6
    assert np.abs(np.diff(whole["roll"])).max() < 1.0  # degrees per frame: a sway, not jitter
    assert 0.01 < whole["blink"].mean() < 0.15
    assert not np.array_equal(whole["roll"], synth.media.pose_track(4, t)["roll"])  # each person their own
