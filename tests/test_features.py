"""Feature extraction end to end: frame axis, fill policy, resume after a kill, shards, bad crops, cache keys,
weights, and the audio driver. Backbones are tiny (timm's ``test_resnet`` / ResNet-18 at 32 px), random
weights, one thread, no workers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from abaw.config import load_config, with_overrides
from abaw.features import extract as extract_mod
from abaw.features.cache import FeatureCache, fill_sources
from abaw.features.extract import cli_features, extract_features, feature_dir, resolve_feature_dir
from abaw.features.registry import VISUAL_PRESETS, WeightsError

REPO = Path(__file__).resolve().parent.parent
FAST = [
    "features.visual.model=test_resnet",
    "features.visual.img_size=32",
    "features.visual.num_workers=0",
    "features.visual.batch_size=16",
    "features.device=cpu",
]


def snapshot(cache_dir: Path) -> dict[str, bytes]:
    """Every subject file of a cache, byte for byte (manifest/config carry times and paths)."""
    return {p.name: p.read_bytes() for p in sorted(Path(cache_dir).glob("*.npy"))}


def presence_from_runs(n: int, runs) -> np.ndarray:
    present = np.ones(n, bool)
    for a, b in runs or []:
        present[a:b] = False
    return present


# ---- the synthetic release --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fast_cfg(synth_cfg, tmp_path_factory):
    return with_overrides(synth_cfg, [*FAST, f"cache_root={tmp_path_factory.mktemp('features_ref')}"])


@pytest.fixture(scope="module")
def reference(fast_cfg):
    """One uninterrupted, unsharded visual extraction of the synthetic release."""
    report = extract_features(fast_cfg, "visual")
    assert report.ok, report.summary()
    return report, snapshot(report.cache_dir)


def _fresh(cfg, tmp_path, *more):
    return with_overrides(cfg, [f"cache_root={tmp_path / 'cache'}", *more])


def test_rows_follow_the_frame_axis_for_every_trap(fast_cfg, reference, synth_release):
    from abaw.data.index import load_index

    report, _ = reference
    table = load_index(fast_cfg).table
    traps = json.loads((synth_release / "ground_truth" / "traps.json").read_text())
    kinds = {t["kind"] for t in traps["traps"]}
    for needed in (
        "label_rows_more",
        "label_rows_fewer",
        "test_count_mismatch",
        "missing_crops_start",
        "missing_crops_middle",
    ):
        assert needed in kinds, f"the synthetic release no longer plants {needed}"
    cache = FeatureCache(report.cache_dir)
    assert cache.complete and report.complete
    assert sorted(report.extracted) == sorted(table["subject"].to_list()) == cache.subjects()
    manifest = cache.manifest
    assert manifest["dim"] == cache.dim == 96 and manifest["dtype"] == "float16"
    for row in table.iter_rows(named=True):
        s, n = row["subject"], row["n_frames"]
        feats, mask = cache.load(s)
        truth = traps["subjects"][s]
        expected_n = truth["sample_rows"] if row["split"] == "test" else truth["label_rows"]
        assert feats.shape == (expected_n, 96) and n == expected_n == manifest["subjects"][s], s
        present = presence_from_runs(n, truth["missing_crop_runs"])
        assert (mask == present).all(), s
        assert (mask == presence_from_runs(n, row["missing_crop_runs"])).all(), s
        # default policy `previous`: filled rows are bit-for-bit copies of their source frame
        src = fill_sources(present, "previous")
        np.testing.assert_array_equal(np.asarray(feats), np.asarray(feats)[src])
        assert np.isfinite(feats.astype(np.float32)).all()
    assert (REPO / "configs").is_dir() and (report.cache_dir / "config.yaml").is_file()
    settings = json.loads((report.cache_dir / "settings.json").read_text())
    assert settings["model"] == "test_resnet" and settings["input_size"] == [32, 32]


def test_rerun_skips_finished_subjects_without_touching_them(fast_cfg, reference):
    report, before = reference
    mtimes = {p.name: p.stat().st_mtime_ns for p in report.cache_dir.glob("*.npy")}
    again = extract_features(fast_cfg, "visual")
    assert again.extracted == [] and sorted(again.skipped) == sorted(report.extracted) and again.frames == 0
    assert snapshot(again.cache_dir) == before
    assert {p.name: p.stat().st_mtime_ns for p in report.cache_dir.glob("*.npy")} == mtimes


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from abaw.config import load_config
    KILL_AT = int(sys.argv[1])
    real_replace, published = os.replace, [0]

    def replace(src, dst):
        # Die at the rename that would publish the features of subject KILL_AT + 1: its mask is already
        # on disk and its feature temp file is complete -- the worst moment to be killed.
        if str(dst).endswith(".npy") and not str(dst).endswith(".mask.npy"):
            if published[0] == KILL_AT:
                os.kill(os.getpid(), signal.SIGKILL)
            published[0] += 1
        return real_replace(src, dst)

    os.replace = replace
    from abaw.features.extract import extract_features
    extract_features(load_config("configs/test.yaml", sys.argv[2:]), "visual")
    """
)


def test_kill_and_resume_gives_the_uninterrupted_cache(fast_cfg, reference, synth_release, tmp_path):
    _, expected = reference
    overrides = [f"data.root={synth_release}", f"cache_root={tmp_path / 'cache'}", *FAST]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, "3", *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    cfg = load_config("configs/test.yaml", overrides)
    cache = FeatureCache(feature_dir(cfg, "visual"))
    assert len(cache.subjects()) == 3 and not cache.complete
    assert list(cache.path.glob(".*.npy.*.tmp")), "the killed run should have left its temp file"

    report = extract_features(cfg, "visual")
    assert report.ok and len(report.skipped) == 3 and len(report.extracted) == len(expected) // 2 - 3
    got = snapshot(cache.path)
    assert got.keys() == expected.keys()
    # Byte for byte, though the killed run's subjects come from a fresh process and the rest from this one
    # (after training runs earlier in the suite: see abaw/metrics/_threads.py).
    assert got == expected
    assert not list(cache.path.glob("*.tmp")) and report.complete


def test_interrupt_mid_run_cleans_up_and_resumes(fast_cfg, reference, tmp_path, monkeypatch):
    from abaw.features.cache import SubjectWriter

    _, expected = reference
    cfg = _fresh(fast_cfg, tmp_path)
    real_commit, calls = SubjectWriter.commit, []

    def commit(self, mask, sources):
        calls.append(self.subject)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_commit(self, mask, sources)

    monkeypatch.setattr(SubjectWriter, "commit", commit)
    with pytest.raises(KeyboardInterrupt):
        extract_features(cfg, "visual")
    monkeypatch.undo()
    cache = FeatureCache(feature_dir(cfg, "visual"))
    assert cache.subjects() == calls[:1] and not list(cache.path.glob("*.tmp"))
    report = extract_features(cfg, "visual")
    assert report.ok and report.skipped == calls[:1]
    assert snapshot(cache.path) == expected


def test_shards_cover_every_subject_once(fast_cfg, reference, tmp_path):
    ref_report, expected = reference
    cfg = _fresh(fast_cfg, tmp_path)
    first = extract_features(cfg, "visual", shard="0/2")
    assert first.ok and not first.complete and first.shard == "0/2"
    second = extract_features(with_overrides(cfg, ["features.shard=1/2"]), "visual")
    assert second.ok and second.complete
    assert not set(first.extracted) & set(second.extracted)
    assert sorted(first.extracted + second.extracted) == sorted(ref_report.extracted)
    names = sorted(ref_report.extracted)
    assert sorted(first.extracted) == names[0::2] and sorted(second.extracted) == names[1::2]
    assert snapshot(second.cache_dir) == expected


def test_corrupt_jpeg_is_reported_and_others_finish(synth_release, tmp_path, capsys):
    root = tmp_path / "release"
    shutil.copytree(synth_release, root, ignore=shutil.ignore_patterns("ground_truth"))
    crops = sorted((root / "cropped_aligned").iterdir())
    bad_truncated = sorted(crops[0].glob("*.jpg"))[5]
    bad_garbage = sorted(crops[1].glob("*.jpg"))[-1]
    bad_truncated.write_bytes(bad_truncated.read_bytes()[:300])
    bad_garbage.write_bytes(b"this is not a jpeg")
    cfg = load_config("configs/test.yaml", [f"data.root={root}", f"cache_root={tmp_path / 'cache'}", *FAST])

    status = cli_features(cfg, argparse.Namespace(shard=None, only="visual"))
    err = capsys.readouterr().err
    assert status == 1
    assert f"FAILED {crops[0].name}" in err and bad_truncated.name in err
    assert f"FAILED {crops[1].name}" in err and bad_garbage.name in err
    cache = FeatureCache(feature_dir(cfg, "visual"))
    assert not cache.complete and not cache.has(crops[0].name) and not cache.has(crops[1].name)
    assert set(cache.subjects()) == {c.name for c in crops[2:]}
    assert not list(cache.path.glob("*.tmp"))

    # Deleting the broken crops makes them ordinary missing frames: the rerun finishes the cache.
    bad_truncated.unlink()
    bad_garbage.unlink()
    assert cli_features(cfg, argparse.Namespace(shard=None, only="visual")) == 0
    assert cache.complete
    assert not cache.load(crops[0].name)[1][int(bad_truncated.stem) - 1]


# ---- a hand-made release: exact values ---------------------------------------------------------------
HAND = {  # subject -> (frame axis, 0-based frames with a crop, crop size (w, h))
    "a": (10, [2, 3, 4, 5, 7], (48, 40)),  # missing at start, middle and end
    "b": (6, list(range(8)), (112, 112)),  # crops beyond the frame axis (label rows fewer than frames)
    "c": (12, list(range(9)), (56, 56)),  # frames beyond the crops on disk (label rows more)
    "d": (5, None, None),  # no crop folder at all
}


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("hand") / "release"
    rng = np.random.default_rng(0)
    rows = []
    for s, (n, frames, size) in HAND.items():
        d = root / "cropped_aligned" / s
        if frames is not None:
            d.mkdir(parents=True)
            for f in frames:
                img = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f"{f + 1:05d}.jpg", quality=95)
        rows.append(
            dict(
                subject=s,
                video=s,
                n_frames=n,
                crop_dir=f"cropped_aligned/{s}" if frames is not None else None,
                video_path=None,
                frame_times=[i / 30 for i in range(n)],
            )
        )
    return root, pl.DataFrame(rows)


def _hand_cfg(hand, tmp_path, *more):
    root, _ = hand
    return load_config(
        "configs/test.yaml",
        [
            f"data.root={root}",
            f"cache_root={tmp_path / 'cache'}",
            "features.visual.img_size=32",
            "features.visual.num_workers=0",
            "features.device=cpu",
            "features.visual.batch_size=3",
            *more,
        ],
    )


def _embed_alone(cfg, path: Path) -> np.ndarray:
    """The features of one crop computed on its own, outside the pipeline."""
    import torch

    from abaw.features.visual import VisualExtractor, decode_crop

    ext = VisualExtractor(cfg.features.visual, "cpu")
    x = ext.transform(image=decode_crop(str(path)))["image"]
    return ext.embed(torch.from_numpy(x.transpose(2, 0, 1).copy())[None])[0]


@pytest.mark.parametrize(
    "policy, sources_of_a",
    [
        ("previous", [2, 2, 2, 3, 4, 5, 5, 7, 7, 7]),
        ("next", [2, 2, 2, 3, 4, 5, 7, 7, 7, 7]),
        ("nearest", [2, 2, 2, 3, 4, 5, 5, 7, 7, 7]),
        ("zeros", [-1, -1, 2, 3, 4, 5, -1, 7, -1, -1]),
    ],
)
def test_fill_policy_exact_values(hand, tmp_path, policy, sources_of_a):
    root, table = hand
    cfg = _hand_cfg(hand, tmp_path, f"features.visual.fill={policy}", "features.visual.dtype=float32")
    report = extract_features(cfg, "visual", index=table)
    assert report.ok and report.complete
    assert any("d: no face crops" in w for w in report.warnings)
    cache = FeatureCache(report.cache_dir)

    own = {f: _embed_alone(cfg, root / "cropped_aligned" / "a" / f"{f + 1:05d}.jpg") for f in HAND["a"][1]}
    feats, mask = cache.load("a")
    assert feats.shape == (10, 512) and mask.tolist() == [i in own for i in range(10)]
    for i, src in enumerate(sources_of_a):
        if src < 0:
            assert (feats[i] == 0).all(), i
        else:
            np.testing.assert_allclose(feats[i], own[src], rtol=1e-4, atol=1e-5, err_msg=f"frame {i}")
            np.testing.assert_array_equal(feats[i], feats[src])

    b, bmask = cache.load("b")
    assert b.shape == (6, 512) and bmask.all()  # the two crops past the axis are ignored
    c, cmask = cache.load("c")
    assert c.shape == (12, 512) and cmask.tolist() == [True] * 9 + [False] * 3
    if policy != "zeros":
        assert (c[9:] == c[8]).all()
    d, dmask = cache.load("d")
    assert d.shape == (5, 512) and not dmask.any() and (d == 0).all()


def test_tta_flip_averages_the_mirrored_crop(hand, tmp_path):
    import torch

    from abaw.features.visual import VisualExtractor, decode_crop

    root, table = hand
    cfg = _hand_cfg(hand, tmp_path, "features.visual.tta_flip=true", "features.visual.dtype=float32")
    report = extract_features(cfg, "visual", index=table)
    feats, _ = FeatureCache(report.cache_dir).load("c")
    plain = load_config("configs/test.yaml", ["features.visual.img_size=32"])
    ext = VisualExtractor(plain.features.visual, "cpu")
    x = ext.transform(image=decode_crop(str(root / "cropped_aligned" / "c" / "00004.jpg")))["image"]
    x = torch.from_numpy(x.transpose(2, 0, 1).copy())[None]
    expected = (ext.embed(x) + ext.embed(torch.flip(x, dims=[3]))) / 2
    np.testing.assert_allclose(feats[3], expected[0], rtol=1e-4, atol=1e-5)


def test_bf16_extraction_is_close_to_fp32_and_cached_apart(hand, tmp_path):
    _, table = hand
    fp32 = extract_features(_hand_cfg(hand, tmp_path, "features.visual.dtype=float32"), "visual", index=table)
    bf16 = extract_features(_hand_cfg(hand, tmp_path, "features.visual.dtype=float32",
                                      "features.visual.precision=bf16"), "visual", index=table)
    assert bf16.cache_dir != fp32.cache_dir and bf16.extracted
    a, _ = FeatureCache(fp32.cache_dir).load("c")
    b, _ = FeatureCache(bf16.cache_dir).load("c")
    assert not np.array_equal(a, b)  # the forward pass really ran in bfloat16 ...
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    assert rel.max() < 0.05  # ... and stays within its 8-bit mantissa of the fp32 features


def test_changed_frame_axis_is_extracted_again(hand, tmp_path):
    _, table = hand
    cfg = _hand_cfg(hand, tmp_path)
    first = extract_features(cfg, "visual", index=table)
    longer = table.with_columns(
        pl.when(pl.col("subject") == "b").then(7).otherwise(pl.col("n_frames")).alias("n_frames")
    )
    second = extract_features(cfg, "visual", index=longer)
    # "d" has no crops at all: a fill, never a finished result, so it is redone on every run
    assert sorted(second.extracted) == ["b", "d"] and sorted(second.skipped) == ["a", "c"]
    cache = FeatureCache(first.cache_dir)
    assert cache.load("b")[0].shape == (7, 512) and cache.manifest["subjects"]["b"] == 7 and cache.complete


def test_two_concurrent_writers_fill_one_cache(hand, tmp_path):
    # Two writers at once (threads here: flock excludes separate open()s in one process exactly as it
    # does two processes), both on the whole release: each subject is written once, nothing is lost.
    from concurrent.futures import ThreadPoolExecutor

    _, table = hand
    expected = snapshot(extract_features(_hand_cfg(hand, tmp_path / "ref"), "visual", index=table).cache_dir)
    cfg = _hand_cfg(hand, tmp_path)
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda _: extract_features(cfg, "visual", index=table), range(2)))
    assert all(r.ok and r.complete for r in reports)
    assert sorted(s for r in reports for s in r.extracted) == sorted(HAND)
    assert snapshot(reports[0].cache_dir) == expected and not list(reports[0].cache_dir.glob("*.tmp"))


# ---- cache keys and weights ------------------------------------------------------------------------
def _dir(cfg, kind):
    """The cache folder a config resolves to (backbone resolved, weights hashed), extracted or not."""
    return resolve_feature_dir(cfg, kind)[0]


def test_cache_key_covers_what_changes_features(tmp_path):
    base = load_config("configs/test.yaml", [f"cache_root={tmp_path}"])
    d0 = _dir(base, "visual")
    assert d0.parent == base.release_cache / "features" and d0.name.startswith("resnet18-")
    w1, w2, w1_copy = tmp_path / "w1.pth", tmp_path / "w2.pth", tmp_path / "elsewhere" / "w1.pth"
    w1.write_bytes(b"weights one")
    w2.write_bytes(b"weights two")
    w1_copy.parent.mkdir()
    w1_copy.write_bytes(b"weights one")
    changed = [
        "features.visual.preset=resnet50",
        "features.visual.model=test_resnet",
        "features.visual.img_size=64",
        "features.visual.tta_flip=true",
        "features.visual.fill=zeros",
        "features.visual.dtype=float32",
        "features.visual.precision=bf16",
        f"features.visual.weights={w1}",
        f"features.visual.weights={w2}",
    ]
    dirs = [_dir(with_overrides(base, [ov]), "visual") for ov in changed]
    assert len({d0, *dirs}) == len(changed) + 1
    # fp32 is the key the caches had before the setting existed, and so is the hand-off record's key
    from abaw.features.handoff import _section

    fp32 = with_overrides(base, ["features.visual.precision=32"])
    assert _dir(fp32, "visual") == d0
    assert "precision" not in _section(fp32, "visual")
    assert _section(with_overrides(base, ["features.visual.precision=bf16"]), "visual")["precision"] == "bf16"
    # the weights file is identified by its content, not its path
    assert _dir(with_overrides(base, [f"features.visual.weights={w1_copy}"]), "visual") == dirs[7]
    same = [
        "features.visual.batch_size=7",
        "features.visual.num_workers=5",
        "features.visual.prefetch_factor=9",
        "features.device=cuda:3",
        "features.shard=1/3",
        "features.visual.channels_last=false",
        "features.audio.preset=vggish",
        "train.lr=0.5",
    ]
    for ov in same:
        assert _dir(with_overrides(base, [ov]), "visual") == d0, ov
    # audio: window, anchor and layer are part of the key, batch size is not
    a0 = _dir(base, "audio")
    assert a0.name.startswith("logmel-") and a0 != d0
    for ov in ("features.audio.window_s=0.5", "features.audio.anchor=end", "features.audio.dtype=float32"):
        assert _dir(with_overrides(base, [ov]), "audio") != a0, ov
    assert _dir(with_overrides(base, ["features.audio.batch_size=3"]), "audio") == a0
    w = ["features.audio.preset=wav2vec2_base", "features.audio.allow_random=true"]
    assert _dir(with_overrides(base, w), "audio") != _dir(
        with_overrides(base, [*w, "features.audio.layer=5"]), "audio"
    )


def test_random_weights_refused_unless_allowed(hand, tmp_path, capsys):
    _, table = hand
    cfg = _hand_cfg(hand, tmp_path, "features.visual.allow_random=false")
    with pytest.raises(WeightsError, match=r"features\.visual\.weights=.*pretrained=true.*allow_random=true"):
        extract_features(cfg, "visual", index=table)
    with pytest.raises(WeightsError):
        _dir(cfg, "visual")
    assert cli_features(cfg, argparse.Namespace(shard=None, only="visual")) == 2
    assert "no weights configured" in capsys.readouterr().err
    assert not (cfg.release_cache / "features").exists()
    missing = with_overrides(cfg, [f"features.visual.weights={tmp_path / 'nope.pth'}"])
    with pytest.raises(WeightsError, match="nope.pth does not exist"):
        _dir(missing, "visual")


def test_pretrained_names_the_hub_weights_without_loading():
    # default.yaml's own backbone is fine-tuned first (features.visual.finetuned); here: its hub weights.
    cfg = load_config("configs/default.yaml", ["features.visual.preset=resnet18", "features.visual.finetuned="])
    from abaw.features.registry import visual_settings

    settings = visual_settings(cfg.features.visual)
    assert settings["weights"] == "hub" and settings["weights_id"] == "timm/resnet18.a1_in1k"


def test_local_weights_file_is_loaded(tmp_path):
    import timm
    import torch

    from abaw.features.visual import VisualExtractor

    torch.manual_seed(123)
    source = timm.create_model("test_resnet", num_classes=10)  # with a classifier: dropped on load
    path = tmp_path / "face_weights.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    cfg = load_config(
        "configs/test.yaml",
        [
            "features.visual.model=test_resnet",
            f"features.visual.weights={path}",
            "features.visual.allow_random=false",
            "features.visual.img_size=32",
        ],
    )
    ext = VisualExtractor(cfg.features.visual, "cpu")
    assert ext.spec.weights == "file"
    loaded = ext.model.state_dict()
    for k, v in source.state_dict().items():
        if not k.startswith("fc."):
            torch.testing.assert_close(loaded[k].contiguous(), v, msg=k)
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match="bad.pth"):
        VisualExtractor(with_overrides(cfg, [f"features.visual.weights={bad}"]).features.visual, "cpu")


@pytest.mark.parametrize("preset", sorted(VISUAL_PRESETS))
def test_every_preset_builds_and_embeds(preset):
    import torch

    from abaw.features.config import VisualBackboneConfig
    from abaw.features.visual import VisualExtractor

    ext = VisualExtractor(VisualBackboneConfig(preset=preset, allow_random=True, img_size=32), "cpu")
    feats = ext.embed(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, ext.dim) and feats.dtype == np.float32 and np.isfinite(feats).all()


# ---- the audio driver -------------------------------------------------------------------------------
class FakeAudio:
    """Stands in for abaw.features.audio: feature 0 = the timestamp, feature 1 = which video."""

    class AudioDecodeError(RuntimeError):
        pass

    AUDIO_PRESETS = {"logmel": None}
    calls: list = []

    @staticmethod
    def audio_settings(acfg):
        return {"preset": acfg.preset, "window_s": acfg.window_s}

    class AudioExtractor:
        dim = 2

        def __init__(self, acfg, device):
            self.device = device

        def embed_video(self, video_path, frame_times):
            FakeAudio.calls.append((Path(video_path).name, np.asarray(frame_times).copy()))
            if "broken" in str(video_path):
                raise FakeAudio.AudioDecodeError(f"{video_path}: cannot decode audio: bad packets")
            code = float(len(Path(video_path).stem))
            feats = np.stack([frame_times, np.full(len(frame_times), code)], 1).astype(np.float32)
            return feats, frame_times < 0.2


def test_audio_once_per_raw_video_for_both_sides(tmp_path, monkeypatch):
    fake = types.SimpleNamespace(
        **{k: getattr(FakeAudio, k) for k in dir(FakeAudio) if not k.startswith("_")}
    )
    FakeAudio.calls = []
    monkeypatch.setattr(extract_mod, "_audio_module", lambda: fake)
    for name in ("v1.mp4", "broken.mp4", "v4.mp4"):
        (tmp_path / name).write_bytes(b"")
    t = lambda n, off=0.0: [off + i / 10 for i in range(n)]  # noqa: E731

    def row(subject, video, n, file, times):
        path = str(tmp_path / file) if file else None
        return dict(subject=subject, video=video, n_frames=n, video_path=path, frame_times=times)

    table = pl.DataFrame(
        [
            row("v1_left", "v1", 4, "v1.mp4", t(4)),
            row("v1_right", "v1", 6, "v1.mp4", t(6)),
            row("broken", "broken", 3, "broken.mp4", t(3)),
            row("gone", "gone", 3, None, None),
            # The file is there but the index could not probe it (no frame clock): zeros, said so.
            row("v1_x", "v1_x", 2, "v1.mp4", None),
            row("v4", "v4", 5, "v4.mp4", t(5, 0.05)),
        ]
    )
    cfg = load_config("configs/test.yaml", [f"cache_root={tmp_path / 'cache'}", "features.device=cpu"])
    report = extract_features(cfg, "audio", index=table)
    assert sorted(name for name, _ in FakeAudio.calls) == ["broken.mp4", "v1.mp4", "v4.mp4"]
    v1_times = dict(FakeAudio.calls)["v1.mp4"]
    np.testing.assert_array_equal(v1_times, t(6))  # the union of both sides' timestamps, one pass
    assert list(report.failed) == ["broken"] and "bad packets" in report.failed["broken"]
    assert any(w.startswith("gone: no raw video") for w in report.warnings)
    assert (
        f"v1_x: no frame timestamps in the index for {tmp_path / 'v1.mp4'} (unreadable video?); audio "
        "features are zeros, mask all False" in report.warnings
    )
    assert sorted(report.extracted) == ["gone", "v1_left", "v1_right", "v1_x", "v4"] and not report.complete

    cache = FeatureCache(report.cache_dir)
    for s, n in (("v1_left", 4), ("v1_right", 6)):
        feats, mask = cache.load(s)
        assert feats.shape == (n, 2) and feats.dtype == np.float16
        np.testing.assert_allclose(feats[:, 0], np.float16(t(n)))
        assert mask.tolist() == [x < 0.2 for x in t(n)]
    np.testing.assert_array_equal(cache.load("v1_left")[0], cache.load("v1_right")[0][:4])
    gone, gmask = cache.load("gone")
    assert gone.shape == (3, 2) and not gmask.any() and (gone == 0).all()
    np.testing.assert_allclose(cache.load("v4")[0][:, 0], np.float16(t(5, 0.05)))


def test_audio_shards_keep_both_sides_of_a_video_together(tmp_path, monkeypatch):
    fake = types.SimpleNamespace(
        **{k: getattr(FakeAudio, k) for k in dir(FakeAudio) if not k.startswith("_")}
    )
    monkeypatch.setattr(extract_mod, "_audio_module", lambda: fake)
    rows = []
    for v in ("a", "b", "c"):
        (tmp_path / f"{v}.mp4").write_bytes(b"")
        for side in ("_left", "_right"):
            rows.append(
                dict(
                    subject=v + side,
                    video=v,
                    n_frames=3,
                    video_path=str(tmp_path / f"{v}.mp4"),
                    frame_times=[0.0, 0.1, 0.2],
                )
            )
    table = pl.DataFrame(rows)
    cfg = load_config("configs/test.yaml", [f"cache_root={tmp_path / 'cache'}"])
    FakeAudio.calls = []
    r0 = extract_features(cfg, "audio", shard="0/2", index=table)
    r1 = extract_features(cfg, "audio", shard="1/2", index=table)
    assert sorted(r0.extracted) == ["a_left", "a_right", "c_left", "c_right"]
    assert sorted(r1.extracted) == ["b_left", "b_right"] and r1.complete and len(FakeAudio.calls) == 3


def test_audio_end_to_end_on_the_synthetic_release(fast_cfg, synth_release, tmp_path):
    from abaw.data.index import load_index

    cfg = _fresh(fast_cfg, tmp_path)
    report = extract_features(cfg, "audio")
    assert report.ok and report.complete, report.summary()
    table = load_index(cfg).table
    cache = FeatureCache(report.cache_dir)
    traps = json.loads((synth_release / "ground_truth" / "traps.json").read_text())["subjects"]
    for row in table.iter_rows(named=True):
        feats, mask = cache.load(row["subject"])
        assert feats.shape == (row["n_frames"], cache.dim) and feats.dtype == np.float16
        if not traps[row["subject"]]["has_audio"]:
            assert not mask.any() and (feats == 0).all()
        else:
            assert mask.mean() > 0.9
    left, right = (cache.load(f"359-30-1280x720_{s}")[0] for s in ("left", "right"))
    n = min(len(left), len(right))
    np.testing.assert_array_equal(left[:n], right[:n])


def test_cache_folder_that_contradicts_its_settings_is_refused(hand, tmp_path):
    from abaw.features.cache import CacheError

    _, table = hand
    cfg = _hand_cfg(hand, tmp_path)
    report = extract_features(cfg, "visual", index=table)
    settings = json.loads((report.cache_dir / "settings.json").read_text())
    settings["fill"] = "zeros"
    (report.cache_dir / "settings.json").write_text(json.dumps(settings))
    with pytest.raises(CacheError, match="settings.json does not match"):
        extract_features(cfg, "visual", index=table)


def test_decoding_workers_give_identical_features_and_report_bad_crops(hand, tmp_path):
    root, table = hand
    expected = snapshot(
        extract_features(_hand_cfg(hand, tmp_path / "inline"), "visual", index=table).cache_dir
    )
    report = extract_features(
        _hand_cfg(
            hand, tmp_path / "workers", "features.visual.num_workers=2", "features.visual.prefetch_factor=1"
        ),
        "visual",
        index=table,
    )
    assert report.ok and snapshot(report.cache_dir) == expected

    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    (broken / "cropped_aligned" / "c" / "00007.jpg").write_bytes(b"\xff\xd8 truncated")
    cfg = load_config(
        "configs/test.yaml",
        [
            f"data.root={broken}",
            f"cache_root={tmp_path / 'b'}",
            "features.visual.img_size=32",
            "features.visual.num_workers=2",
            "features.device=cpu",
            "features.visual.batch_size=3",
        ],
    )
    report = extract_features(cfg, "visual", index=table)
    assert list(report.failed) == ["c"] and "00007.jpg" in report.failed["c"]
    assert sorted(report.extracted) == ["a", "b", "d"] and not report.complete
