"""Training: windows and stitching, the datamodule's masks and reads, the Lightning loop (eval mode,
artifacts, resume) on small fakes, and end-to-end on the generated release."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from training_fakes import PointwiseModel, fake_feature_dir, make_fake_release

from abaw.config import load_config, with_overrides
from abaw.training.datamodule import EpochShuffleSampler, FusionDataModule, SubjectSource, collate_windows
from abaw.training.inference import predict_windows
from abaw.training.store import RowReader, shift_index
from abaw.training.windows import Stitcher, window_starts

SMALL_MODEL = ["model.d_audio=16", "model.d_visual=16", "model.tcn_layers=2", "model.tcn_kernel=3",
               "model.iterations=2", "model.head_hidden=16"]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """(cfg, index table) of a fake release whose caches sit where ``feature_dir`` points."""
    import abaw.features.extract as extract

    monkeypatch.setattr(extract, "feature_dir", fake_feature_dir)
    cfg = load_config("configs/test.yaml", [f"cache_root={tmp_path / 'cache'}", "train.window=64",
                                            "train.hop=48", "train.batch_size=8", "train.lr=3e-3",
                                            "train.patience=0", *SMALL_MODEL])
    return cfg, make_fake_release(cfg, tmp_path)


def datamodule(cfg, table, **over) -> FusionDataModule:
    if over:
        cfg = with_overrides(cfg, [f"train.{k}={v}" for k, v in over.items()])
    return FusionDataModule(cfg, source=SubjectSource(cfg, table=table))


# ---- windows ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "window", "hop"), [(1000, 300, 200), (301, 300, 200), (300, 300, 200),
                                                  (120, 300, 200), (97, 10, 3), (10, 10, 10)])
def test_windows_cover_every_frame_and_end_align(n, window, hop):
    starts = window_starts(n, window, hop)
    covered = np.zeros(n, dtype=int)
    for s in starts:
        covered[s:s + window] += 1
    assert covered.min() >= 1
    assert starts[0] == 0
    if n >= window:
        assert starts[-1] == n - window  # the last window ends on the last frame, never padded
        assert np.all(np.diff(starts)[:-1] == hop) and np.diff(starts).max(initial=0) <= hop
    else:
        assert list(starts) == [0]


def test_stitched_windows_equal_the_whole_subject_forward(fake):
    cfg, table = fake
    source = SubjectSource(cfg, table=table)
    subjects = source.open(["v01", "v04", "v02"], labels=True)  # v02 (50 frames) is shorter than a window
    torch.manual_seed(0)
    model = PointwiseModel(p_drop=0.5)  # dropout: a model left in train mode would not match
    model.train()
    whole = predict_windows(model, subjects, window=0, hop=0, batch_size=1)
    windows = predict_windows(model, subjects, window=64, hop=48, batch_size=4)
    assert model.training  # restored afterwards
    for s in subjects:
        a, b = whole.mean(s.name), windows.mean(s.name)
        assert a.shape == (s.n_frames, 2) and a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=1e-5)
        ga, gb = whole.mean(s.name, "gate:audio/iter"), windows.mean(s.name, "gate:audio/iter")
        np.testing.assert_allclose(ga, gb, atol=1e-5)
        np.testing.assert_array_equal(whole.fixed(s.name, "mask"), s.valid)


def test_stitcher_averages_overlaps_and_refuses_gaps():
    st = Stitcher()
    st.add("s", 0, 5, {"pred": np.ones((4, 2))})
    st.add("s", 2, 5, {"pred": np.full((4, 2), 3.0)})  # last row is padding past frame 5
    np.testing.assert_allclose(st.mean("s")[:, 0], [1, 1, 2, 2, 3])
    st.add("t", 0, 6, {"pred": np.ones((3, 2))})
    with pytest.raises(ValueError, match="t: 3 frame"):
        st.mean("t")
    assert st.covered("t").tolist() == [True] * 3 + [False] * 3


# ---- the datamodule -------------------------------------------------------------------------------
@pytest.mark.parametrize("mask_missing_face", [False, True])
def test_mask_excludes_unlabelled_padding_and_optionally_missing_faces(fake, mask_missing_face):
    cfg, table = fake
    dm = datamodule(cfg, table, mask_missing_face=mask_missing_face)
    vdir = fake_feature_dir(cfg, "visual")
    rows = {r["subject"]: r for r in table.iter_rows(named=True)}
    seen_pad = seen_unlabelled = seen_noface = 0
    loader = dm.train_dataloader()
    for batch in loader:
        for j, subject in enumerate(batch["subject"]):
            start, n = int(batch["start"][j]), int(batch["n_frames"][j])
            length = int(batch["pad"][j].sum())
            raw = np.loadtxt(rows[subject]["label_file"], delimiter=",", skiprows=1, ndmin=2)
            face = np.load(vdir / f"{subject}.mask.npy")
            expect = np.zeros(batch["mask"].shape[1], dtype=bool)
            sl = slice(start, start + length)
            expect[:length] = (raw[sl] != -5).all(1)
            if mask_missing_face:
                expect[:length] &= face[sl]
            np.testing.assert_array_equal(batch["mask"][j].numpy(), expect, err_msg=subject)
            assert length == min(64, n - start)
            seen_pad += int((~batch["pad"][j]).sum())
            seen_unlabelled += int((raw[sl] == -5).all(1).sum())
            seen_noface += int((~face[sl]).sum())
            # The -5 sentinel never reaches the loss, even where the mask is off.
            assert (batch["gold"][j].abs() <= 1).all()
    assert seen_pad and seen_unlabelled and seen_noface  # the fakes exercise every case


def test_training_windows_shuffle_per_epoch_with_a_seed():
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    ranks = [EpochShuffleSampler(50, seed=3, rank=r, world=3) for r in range(3)]
    shards = [list(r) for r in ranks]
    assert {len(s) for s in shards} == {17}
    assert set().union(*shards) == set(range(50))  # every window on some rank; wrap-padding only


def test_row_reader_reads_the_file_not_resident_pages(tmp_path):
    arr = np.random.default_rng(0).normal(size=(500, 7)).astype(np.float16)
    np.save(tmp_path / "x.npy", arr)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    r = RowReader(mm, "x")
    assert r._path is not None  # the pread path, not memmap slicing
    np.testing.assert_array_equal(r.read(10, 70), arr[10:70].astype(np.float32))
    np.testing.assert_array_equal(r.read(490, 600), arr[490:].astype(np.float32))
    idx = np.array([3, 3, 4, 9])
    np.testing.assert_array_equal(r.read_index(idx), arr[idx].astype(np.float32))
    (tmp_path / "x.npy").write_bytes((tmp_path / "x.npy").read_bytes()[:-100])  # truncated on disk
    with pytest.raises(OSError, match="short read"):
        r.read(400, 500)


def test_audio_shift_uses_timestamps(fake):
    t30 = np.arange(100) / 30.0
    np.testing.assert_array_equal(shift_index(t30, 0.5)[15:], np.arange(85))
    assert (shift_index(t30, 0.5)[:15] == 0).all()
    t6 = np.arange(40) / 6.0  # 6 fps: half a second is 3 frames, not 15
    np.testing.assert_array_equal(shift_index(t6, 0.5)[3:], np.arange(37))
    cfg, table = fake
    plain = SubjectSource(cfg, table=table).open(["v04"])[0]
    shifted = SubjectSource(cfg, table=table, audio_shift_s=0.5).open(["v04"])[0]
    n = plain.n_frames
    np.testing.assert_array_equal(shifted.read(20, 84)["audio"], plain.read(20 - 15, 84 - 15)["audio"])  # 30 fps
    np.testing.assert_array_equal(shifted.read(0, n)["visual"], plain.read(0, n)["visual"])


def test_features_are_standardised_per_subject(fake):
    from abaw.training.datamodule import WindowDataset, make_windows
    from abaw.training.inference import model_inputs

    cfg, table = fake
    assert cfg.train.feature_norm == "auto" and not cfg.features.visual.finetuned  # frozen: "subject"
    raw = SubjectSource(with_overrides(cfg, ["train.feature_norm=none"]), table=table).open(["v04"])[0]
    std = SubjectSource(cfg, table=table).open(["v04"])[0]
    assert raw.norm is None
    whole = model_inputs(WindowDataset([std], make_windows([std], 0, 0)).__getitems__([0]))
    windows = WindowDataset([std], make_windows([std], 64, 48))
    for kind, x in zip(("audio", "visual"), whole, strict=True):
        x = x[0].double().numpy()
        np.testing.assert_allclose(x.mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(x.std(0), 1, atol=1e-4)
        # A window is standardised with its subject's statistics, not its own.
        mean, scale = std.norm[kind]
        for batch in (windows.__getitems__([1, 2]), collate_windows([windows[1], windows[2]])):
            got = model_inputs(batch)[0 if kind == "audio" else 1][0].numpy()
            expect = (raw.read(48, 112)[kind].astype(np.float32) - mean) / scale
            np.testing.assert_allclose(got, expect, atol=1e-5)


def test_one_modality_can_skip_the_per_subject_standardisation(fake):
    """train.feature_norm=audio (what "auto" means for fine-tuned visual features: a video's mean
    feature carries its mean valence) leaves the visual features as cached while audio is still z-scored
    per subject; the setting is part of the run identity."""
    from abaw.training.datamodule import WindowDataset, make_windows
    from abaw.training.inference import model_inputs
    from abaw.training.runs import identity_hash

    cfg, table = fake
    from abaw.training.config import standardised_kinds

    mixed_cfg = with_overrides(cfg, ["train.feature_norm=audio"])
    assert standardised_kinds(mixed_cfg) == ("audio",) and standardised_kinds(cfg) == ("audio", "visual")
    assert standardised_kinds(with_overrides(cfg, ["features.visual.finetuned=faces"])) == ("audio",)
    raw = SubjectSource(with_overrides(cfg, ["train.feature_norm=none"]), table=table).open(["v04"])[0]
    mixed = SubjectSource(mixed_cfg, table=table).open(["v04"])[0]
    audio, visual = model_inputs(WindowDataset([mixed], make_windows([mixed], 0, 0)).__getitems__([0]))
    n = raw.n_frames
    np.testing.assert_array_equal(visual[0].numpy(), raw.read(0, n)["visual"].astype(np.float32))
    np.testing.assert_allclose(audio[0].double().numpy().std(0), 1, atol=1e-4)
    dirs = {"audio": "a", "visual": "v"}
    assert identity_hash(mixed_cfg, dirs) != identity_hash(cfg, dirs)
    with pytest.raises(ValueError, match="feature_norm"):
        with_overrides(cfg, ["train.feature_norm=visual-only"])


def test_shuffled_labels_are_a_derangement(fake):
    cfg, table = fake
    dm = datamodule(cfg, table, shuffle_labels="true")
    assert dm.label_sources and all(k != v for k, v in dm.label_sources.items())
    assert sorted(dm.label_sources.values()) == sorted(dm.label_sources)
    plain = {s.name: s for s in datamodule(cfg, table).train_subjects}
    for s in dm.train_subjects:
        src = plain[dm.label_sources[s.name]]
        m = min(s.n_frames, src.n_frames)
        np.testing.assert_array_equal(s.gold[:m], src.gold[:m])
        assert not s.valid[m:].any()
    # Validation keeps its true labels: the score must be against the truth.
    for a, b in zip(dm.val_subjects, datamodule(cfg, table).val_subjects, strict=True):
        np.testing.assert_array_equal(a.gold, b.gold)


def test_cache_that_does_not_match_the_frame_axis_is_named(fake):
    cfg, table = fake
    bad = table.with_columns(pl.when(pl.col("subject") == "v01").then(999).otherwise(pl.col("n_frames"))
                             .alias("n_frames"))
    with pytest.raises(ValueError, match=r"v01.*240 feature rows.*999 frames"):
        datamodule(cfg, bad)
    missing = pl.concat([table, table.filter(pl.col("subject") == "v01").with_columns(subject=pl.lit("ghost"))])
    with pytest.raises(FileNotFoundError, match="ghost.*abaw features") as e:
        datamodule(cfg, missing)
    from abaw.errors import AbawError

    assert isinstance(e.value, AbawError)  # the CLI prints one line, not a traceback


def test_collate_pads_to_the_longest_window():
    items = [{"audio": np.ones((n, 2), np.float32), "visual": np.ones((n, 3), np.float32),
              "gold": np.zeros((n, 2), np.float32), "mask": np.ones(n, bool), "face": np.arange(n) % 2 == 0,
              "subject": f"s{n}", "start": 0, "n_frames": n} for n in (5, 9)]
    b = collate_windows(items)
    assert b["audio"].shape == (2, 9, 2)
    assert b["pad"].sum(1).tolist() == [5, 9] and b["mask"].sum(1).tolist() == [5, 9]
    assert b["face"].sum(1).tolist() == [3, 5] and not b["face"][0, 5:].any()  # padding has no face


# ---- the Lightning loop ------------------------------------------------------------------------------
class ModeRecorder:
    """Callback recording whether the network is in train mode at each train/validation batch."""

    def __new__(cls):
        import pytorch_lightning as pl

        class _Rec(pl.Callback):
            def __init__(self):
                self.train, self.val = [], []

            def on_train_batch_start(self, trainer, module, batch, idx):
                self.train.append(module.model.training)

            def on_validation_batch_start(self, trainer, module, batch, idx, dataloader_idx=0):
                self.val.append(module.model.training)

        return _Rec()


def test_training_run_writes_its_artifacts_and_learns(fake):
    from abaw.training.train import train

    cfg, table = fake
    cfg = with_overrides(cfg, ["train.max_epochs=6", "train.name=pointwise"])
    rec = ModeRecorder()
    dm = datamodule(cfg, table)
    metrics, art = train(cfg, datamodule=dm, model=PointwiseModel(p_drop=0.1), callbacks=[rec])
    run = cfg.release_cache / "runs" / "pointwise"
    # The schedule's length is computed without the loader; it must match the steps Lightning ran.
    assert torch.load(run / "last.ckpt", weights_only=False)["global_step"] == dm.steps_per_epoch() * 6
    for name in ("best.ckpt", "last.ckpt", "config.yaml", "folds.json", "val_predictions.parquet",
                 "metrics.csv", "per_subject.csv", "postprocess.json", "val_plot.png", "curves.png",
                 "summary.json"):
        assert (run / name).is_file(), name
    assert set(rec.train) == {True} and set(rec.val) == {False}  # Lightning's eval() in validation
    # The features carry the labels: six short epochs must find them (a broken loop scores ~0).
    assert metrics["p_va"] > 0.5, metrics
    assert metrics["p_va_post"] >= metrics["p_va"] - 1e-6  # window 1 is a candidate
    history = epoch_rows(run)
    assert history["epoch"].to_list() == list(range(6))
    assert {"train/loss", "val/p_va", "val/ccc_v", "val/ccc_a", "val/p_va_best", "lr"} <= set(history.columns)
    assert any(c.startswith("gate/audio/iter") for c in history.columns)
    assert history["val/p_va_best"].to_list() == list(np.maximum.accumulate(history["val/p_va"].to_numpy()))
    assert abs(history["val/p_va"].max() - metrics["p_va"]) < 1e-4  # the best checkpoint, re-scored
    preds = pl.read_parquet(run / "val_predictions.parquet")
    assert preds.columns == ["subject", "frame", "pred_v", "pred_a", "gold_v", "gold_a", "valid"]
    assert preds.height == 200 + 60 + 150
    assert preds.filter(~pl.col("valid"))["gold_v"].null_count() == (~preds["valid"]).sum()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"] == pytest.approx(metrics)
    assert summary["split"]["mode"] == "official" and summary["split"]["n_val"] == 3
    folds = json.loads((run / "folds.json").read_text())
    assert sorted(folds["val"]) == ["v10", "v11", "v12"] and "v10" not in folds["train"]
    assert art["best"] == run / "best.ckpt"


def epoch_rows(run):
    """metrics.csv (Lightning's CSVLogger): the per-epoch rows, those with validation metrics."""
    return pl.read_csv(run / "metrics.csv").filter(pl.col("val/p_va").is_not_null())


def test_a_changed_config_trains_its_own_run_and_leaves_the_first_untouched(fake):
    """Issue 10.1: after a finished run, a changed lr must really train with the new lr, in its own
    folder (readable name + hash); the first run's files stay byte for byte as they were."""
    from abaw.training.train import train

    cfg, table = fake
    first = with_overrides(cfg, ["train.max_epochs=1"])
    m1, art1 = train(first, datamodule=datamodule(first, table), model=PointwiseModel())
    run1 = art1["summary"].parent
    assert run1.name.startswith("grjca_hier-official-") and len(run1.name.rsplit("-", 1)[1]) == 8
    before = {p.name: p.read_bytes() for p in run1.iterdir() if p.is_file()}

    second = with_overrides(first, ["train.lr=0.01"])
    m2, art2 = train(second, datamodule=datamodule(second, table), model=PointwiseModel())
    run2 = art2["summary"].parent
    assert run2 != run1 and run2.name.startswith("grjca_hier-official-")
    ckpt = torch.load(run2 / "best.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["train_cfg"]["lr"] == 0.01
    assert ckpt["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 0.01
    assert ckpt["global_step"] > 0  # trained, not restored
    assert {p.name: p.read_bytes() for p in run1.iterdir() if p.is_file()} == before

    # The same config again: complete, returned as it is, nothing trained or rewritten.
    again, art = train(first, datamodule=datamodule(first, table), model=PointwiseModel())
    assert again == pytest.approx(m1) and art["summary"].parent == run1
    assert {p.name: p.read_bytes() for p in run1.iterdir() if p.is_file()} == before
    # Settings that do not change training (workers, progress, device) keep the identity.
    from abaw.training.runs import run_name

    quiet = with_overrides(first, ["train.num_workers=2", "train.progress_bar=false", "train.accelerator=cpu"])
    assert run_name(quiet) == run1.name


def test_an_explicit_name_holding_another_identity_is_refused(fake):
    from abaw.errors import AbawError
    from abaw.training.train import train

    cfg, table = fake
    one = with_overrides(cfg, ["train.max_epochs=1", "train.name=mine"])
    train(one, datamodule=datamodule(one, table), model=PointwiseModel())
    run = one.release_cache / "runs" / "mine"
    ckpt = (run / "best.ckpt").read_bytes()
    other = with_overrides(one, ["train.lr=0.01"])
    with pytest.raises(AbawError, match=r"runs/mine: holds run .*differs in train\.lr"):
        train(other, datamodule=datamodule(other, table), model=PointwiseModel())
    assert (run / "best.ckpt").read_bytes() == ckpt


class Kill(Exception):
    pass


class KillInEpoch:
    """A callback that dies (like kill -9, but in-process) as epoch ``k`` starts, after epoch k-1 was
    checkpointed."""

    def __new__(cls, k: int):
        import pytorch_lightning as pl

        class _Kill(pl.Callback):
            def on_train_epoch_start(self, trainer, module):
                if trainer.current_epoch == k:
                    raise Kill(f"killed in epoch {k}")

        return _Kill()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_killed_and_resumed_run_ends_like_an_uninterrupted_one(fake, num_workers):
    """Issue 10.3: with train.deterministic=true on CPU a run killed in epoch 2 and resumed ends with
    exactly the metrics of the uninterrupted run (dropout, window order and worker seeds restored)."""
    from abaw.training.train import train

    cfg, table = fake
    base = with_overrides(cfg, ["train.max_epochs=4", "train.deterministic=true", "train.accelerator=cpu",
                                f"train.num_workers={num_workers}", "train.progress_bar=false"])

    def run(name, callbacks=()):
        c = with_overrides(base, [f"train.name={name}"])
        torch.manual_seed(0)
        return train(c, datamodule=datamodule(c, table), model=PointwiseModel(p_drop=0.3), callbacks=callbacks)

    whole, art = run("whole")
    with pytest.raises(Kill):
        run("killed", [KillInEpoch(2)])
    killed = base.release_cache / "runs" / "killed"
    assert torch.load(killed / "last.ckpt", weights_only=False)["epoch"] == 1
    assert not (killed / "summary.json").exists()
    torch.manual_seed(123)  # whatever the process did in between must not matter
    resumed, _ = run("killed")
    a, b = epoch_rows(art["summary"].parent), epoch_rows(killed)
    assert resumed == whole  # exactly, not approximately
    assert a["epoch"].to_list() == b["epoch"].to_list() == [0, 1, 2, 3]  # curve kept across the kill
    np.testing.assert_array_equal(a["val/p_va"].to_numpy(), b["val/p_va"].to_numpy())


def test_session_epochs_pause_and_the_next_invocation_continues(fake):
    from abaw.training.train import RunPaused, train

    cfg, table = fake
    c = with_overrides(cfg, ["train.max_epochs=3", "train.session_epochs=2", "train.name=sliced"])
    with pytest.raises(RunPaused, match="paused after epoch 2 of 3"):
        train(c, datamodule=datamodule(c, table), model=PointwiseModel())
    metrics, art = train(c, datamodule=datamodule(c, table), model=PointwiseModel())
    assert metrics["epochs"] == 3
    assert torch.load(art["last"], weights_only=False)["epoch"] == 2
    assert epoch_rows(art["summary"].parent)["epoch"].to_list() == [0, 1, 2]


def test_train_says_which_subjects_it_excludes(fake, caplog):
    from abaw.training.train import train

    cfg, table = fake
    bad = table.with_columns(
        usable=pl.col("subject") != "v05",
        errors=pl.when(pl.col("subject") == "v05").then(pl.lit(["video unreadable"])).otherwise(pl.lit([]))
        .cast(pl.List(pl.String)))
    c = with_overrides(cfg, ["train.max_epochs=1", "train.name=excl"])
    with caplog.at_level("WARNING", logger="abaw.training.train"):
        train(c, datamodule=datamodule(c, bad), model=PointwiseModel())
    assert "excluded v05: marked unusable in the index (video unreadable)" in caplog.text


def test_every_run_folder_records_its_feature_caches(fake):
    from abaw.training.train import train

    cfg, table = fake
    for path in (fake_feature_dir(cfg, "visual"), fake_feature_dir(cfg, "audio")):
        (path / "settings.json").write_text(json.dumps({"kind": path.name, "img_size": 32}))
    c = with_overrides(cfg, ["train.max_epochs=1"])
    _, art = train(c, datamodule=datamodule(c, table), model=PointwiseModel())
    record = json.loads((art["summary"].parent / "features.json").read_text())
    assert set(record) == {"visual", "audio"}
    for kind in ("visual", "audio"):
        assert record[kind]["dir"] == str(fake_feature_dir(cfg, kind).resolve())
        assert record[kind]["settings"] == {"kind": f"fake-{kind}", "img_size": 32}


def test_paper_mode_pads_to_the_paper_length(fake):
    """Issue 10.13: paper mode trains end to end (short subjects padded to paper_length), and a window
    that differs from paper_length is refused before anything is written."""
    from abaw.errors import AbawError
    from abaw.training.train import train

    cfg, table = fake
    paper = with_overrides(cfg, ["model.paper_mode=true", "model.paper_length=64", "train.max_epochs=1",
                                 "train.name=paper"])
    metrics, art = train(paper, datamodule=datamodule(paper, table))  # v02 (50) and v11 (60) are short
    assert np.isfinite(metrics["p_va"])
    bad = with_overrides(paper, ["train.window=48", "train.hop=32", "train.name=paper-bad"])
    with pytest.raises(AbawError, match=r"expected L=64 .*train\.window=48"):
        train(bad, datamodule=datamodule(bad, table))
    assert not (paper.release_cache / "runs" / "paper-bad").exists()
    whole = with_overrides(paper, ["train.eval_window=-1", "train.name=paper-whole"])
    with pytest.raises(AbawError, match="whole subjects"):
        train(whole, datamodule=datamodule(whole, table))


def test_kfold_run_records_its_split(fake):
    from abaw.training.train import train

    cfg, table = fake
    cfg = with_overrides(cfg, ["train.folds=3", "train.fold=1", "train.max_epochs=1"])
    _, art = train(cfg, datamodule=datamodule(cfg, table), model=PointwiseModel())
    assert art["summary"].parent.name.startswith(f"{cfg.model.variant}-fold1-")
    folds = json.loads(art["folds"].read_text())
    assert folds["mode"] == "kfold" and folds["fold"] == 1 and folds["folds"] == 3
    assert set(folds["official_val_in_train"]) <= {"v10", "v11", "v12"}
    videos = lambda names: {n.replace("_left", "").replace("_right", "") for n in names}  # noqa: E731
    assert videos(folds["train"]).isdisjoint(videos(folds["val"]))


# ---- end to end on the generated release -------------------------------------------------------------
# Tiny random-weight backbones so extraction takes seconds (what the features tests use too).
FAST_FEATURES = ["features.visual.model=test_resnet", "features.visual.img_size=32",
                 "features.visual.num_workers=0", "features.visual.batch_size=16", "features.device=cpu"]


@pytest.fixture(scope="module")
def synth_features(synth_cfg):
    """The tiny synthetic release with both feature caches extracted (index, caches: the real code)."""
    from abaw.features.extract import extract_features

    cfg = with_overrides(synth_cfg, [*FAST_FEATURES, *SMALL_MODEL, "train.patience=0"])
    for kind in ("visual", "audio"):
        report = extract_features(cfg, kind)
        assert report.ok, report.summary()
    return cfg


def test_end_to_end_on_the_synthetic_release(synth_features):
    from abaw.data.index import load_index
    from abaw.submit.predict import predict_split
    from abaw.training.train import train

    cfg = with_overrides(synth_features, ["train.name=e2e", "train.max_epochs=2"])
    metrics, art = train(cfg)
    assert np.isfinite([metrics[k] for k in ("p_va", "ccc_v", "ccc_a", "p_va_post")]).all()
    assert metrics["epochs"] == 2
    summary = json.loads(art["summary"].read_text())
    assert summary["features"]["visual"]["name"].startswith("test_resnet-")
    assert summary["features"]["audio"]["manifest_sha256"]
    table = load_index(cfg).table
    test = {r["subject"]: r["n_frames"] for r in table.iter_rows(named=True) if r["split"] == "test"}
    preds = predict_split(cfg, [art["summary"].parent], "test")
    assert {s: len(p) for s, p in preds.items()} == test
    assert all(np.isfinite(p).all() and np.abs(p).max() <= 1 for p in preds.values())


def test_audio_alignment_matters(synth_features):
    """An audio-only model, evaluated with its audio features moved by -0.5, 0 and +0.5 s (by frame
    timestamps): arousal CCC must peak at the pipeline's own alignment. The tiny release's two
    validation subjects are too few for the model to generalise, so this scores the subjects it was
    fit on; the demo figures in the report are on validation."""
    from abaw.metrics import p_va
    from abaw.submit.predict import predict_subjects
    from abaw.training.datamodule import SubjectSource
    from abaw.training.train import run_dir, train

    cfg = with_overrides(synth_features, ["train.name=align", "model.variant=audio", "train.max_epochs=15"])
    train(cfg)
    source = SubjectSource(cfg)
    names = source.subjects_of_split("train")
    subjects = source.open(names)
    gold = np.concatenate([s.gold for s in subjects])
    mask = np.concatenate([s.valid for s in subjects])
    ccc_a = {}
    for shift in (-0.5, 0.0, 0.5):
        preds = predict_subjects(run_dir(cfg), names, audio_shift_s=shift)
        ccc_a[shift] = p_va(np.concatenate([preds[n] for n in names]), gold, mask)["ccc_a"]
    assert ccc_a[0.0] > 0.15, ccc_a  # learnt something to lose
    assert ccc_a[0.0] - max(ccc_a[-0.5], ccc_a[0.5]) > 0.05, ccc_a


def test_run_names_mark_folds_and_sanity_controls(tmp_path, monkeypatch):
    import abaw.features.extract as extract
    from abaw.training.train import run_name

    monkeypatch.setattr(extract, "feature_dir", fake_feature_dir)
    cfg = load_config("configs/test.yaml", [f"cache_root={tmp_path}"])

    def readable(c):
        name = run_name(c)
        assert len(name.rsplit("-", 1)[1]) == 8
        return name.rsplit("-", 1)[0]

    assert readable(cfg) == "grjca_hier-official"
    assert readable(with_overrides(cfg, ["train.folds=5", "train.fold=3", "model.variant=rjca"])) == "rjca-fold3"
    assert readable(with_overrides(cfg, ["train.shuffle_labels=true"])) == "grjca_hier-official-shuffled-labels"
    assert readable(with_overrides(cfg, ["train.audio_shift_s=0.5"])) == "grjca_hier-official-audio-shift+0.5s"
    assert run_name(with_overrides(cfg, ["train.name=mine", "train.shuffle_labels=true"])) == "mine"
    # What changes training changes the hash; what only changes how it runs does not.
    for changed in ("train.lr=0.01", "seed=1", "model.d_audio=8", "train.fold_seed=2", "train.max_epochs=3",
                    "postprocess.windows=[1]"):
        assert run_name(with_overrides(cfg, [changed])) != run_name(cfg), changed
    for same in ("train.num_workers=3", "train.devices=2", "train.progress_bar=false", "train.resume=false",
                 "train.session_epochs=1", "train.deterministic=true"):
        assert run_name(with_overrides(cfg, [same])) == run_name(cfg), same
    base = run_name(cfg)
    monkeypatch.setattr(extract, "feature_dir", lambda c, k: c.release_cache / "features" / f"other-{k}")
    assert run_name(cfg) != base  # another feature cache is another run


def test_run_identity_follows_the_data_it_was_trained_on(tmp_path):
    """A regenerated release (new crops or audio behind the same cache name) or a corrected label file
    gives another run identity: a finished run is never handed back for data it was not trained on."""
    import os

    from abaw.training.runs import identity_hash

    cfg = load_config("configs/test.yaml", [f"cache_root={tmp_path / 'cache'}", f"data.root={tmp_path}"])
    cache = tmp_path / "visual-abc"
    cache.mkdir()
    (cache / "s1.inputs.json").write_text('{"crops": "digest-1"}')
    label = tmp_path / "s1.txt"
    label.write_text("valence,arousal\n0.1,0.2\n")
    cfg.index_path.parent.mkdir(parents=True)
    pl.DataFrame({"subject": ["s1"], "split": ["train"], "label_file": [str(label)]}).write_parquet(cfg.index_path)
    dirs = {"visual": str(cache), "audio": ""}
    first = identity_hash(cfg, dirs)
    assert identity_hash(cfg, dirs) == first
    (cache / "s1.inputs.json").write_text('{"crops": "digest-2"}')  # re-extracted from other crops
    second = identity_hash(cfg, dirs)
    assert second != first
    label.write_text("valence,arousal\n0.3,0.2\n")  # the label file corrected
    os.utime(label, ns=(1, 1))
    assert identity_hash(cfg, dirs) != second


def test_gate_parameters_get_their_own_learning_rate(monkeypatch):
    """train.gate_lr_mult scales the lr of every GRJCA gate parameter (and of nothing else), with the
    usual weight-decay split, and the schedule keeps the ratio."""
    from types import SimpleNamespace

    from abaw.models.gates import IterationGate, StageGate
    from abaw.training.module import FusionModule

    small = dict(variant="grjca_hier", d_audio=8, d_visual=8, tcn_layers=1, tcn_kernel=3, iterations=2,
                 head_hidden=4, face_presence="both")
    lit = FusionModule({"lr": 1e-3, "gate_lr_mult": 30.0, "max_epochs": 2, "warmup_epochs": 0}, small, 6, 10)
    trainer = SimpleNamespace(max_epochs=2, datamodule=SimpleNamespace(steps_per_epoch=lambda: 5))
    monkeypatch.setattr(FusionModule, "trainer", property(lambda self: trainer))
    opt = lit.configure_optimizers()["optimizer"]
    gate_ids = {id(p) for m in lit.model.modules() if isinstance(m, IterationGate | StageGate) for p in m.parameters()}
    assert gate_ids
    seen = set()
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        seen |= ids
        gate = ids <= gate_ids
        assert gate or not ids & gate_ids  # a group is all gates or none
        assert group["initial_lr"] == pytest.approx(1e-3 * (30 if gate else 1))
        assert group["weight_decay"] == (0.0 if all(p.ndim < 2 for p in group["params"]) else 1e-2)
    assert seen == {id(p) for p in lit.model.parameters()}


def test_predictions_are_padded_to_the_models_own_length_floor(fake):
    """A paper-mode model only runs at its welded length: predict_windows pads to it without being
    told (abaw video and the ablation's test scoring once called it without pad_to)."""
    from training_fakes import D_AUDIO, D_VISUAL

    from abaw.models import build_model
    from abaw.models.config import ModelConfig

    cfg, table = fake
    subjects = SubjectSource(cfg, table=table).open(["v02", "v01"], labels=True)  # v02: 50 frames
    model = build_model(ModelConfig(variant="grjca_hier", d_audio=8, d_visual=8, tcn_layers=1, tcn_kernel=3,
                                    iterations=2, head_hidden=4, paper_mode=True, paper_length=64),
                        D_AUDIO, D_VISUAL)
    st = predict_windows(model, subjects, window=64, hop=48, batch_size=2)
    padded = predict_windows(model, subjects, window=64, hop=48, batch_size=2, pad_to=64)
    for s in subjects:
        assert st.mean(s.name).shape == (s.n_frames, 2)
        np.testing.assert_array_equal(st.mean(s.name), padded.mean(s.name))
