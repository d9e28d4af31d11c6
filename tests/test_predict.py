"""Prediction from trained runs: loading, whole-subject predictions, ensembles, summaries, the CLI."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import polars as pl
import pytest
from training_fakes import fake_feature_dir, make_fake_release

from abaw.config import load_config, with_overrides
from abaw.submit.predict import (
    cli_predict,
    ensemble_postprocess,
    load_run,
    predict_split,
    predict_subjects,
    run_summaries,
)

SMALL_MODEL = ["model.d_audio=16", "model.d_visual=16", "model.tcn_layers=2", "model.tcn_kernel=3",
               "model.iterations=2", "model.head_hidden=16"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(cfg, table, run dir) of one small grjca_hier run on a fake release (trained once per module)."""
    import abaw.features.extract as extract
    from abaw.training.datamodule import FusionDataModule, SubjectSource
    from abaw.training.train import train

    tmp = tmp_path_factory.mktemp("predict")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(extract, "feature_dir", fake_feature_dir)
        cfg = load_config("configs/test.yaml", [f"cache_root={tmp / 'cache'}", "train.window=64", "train.hop=48",
                                                "train.batch_size=8", "train.max_epochs=2", "train.patience=0",
                                                "train.name=small", *SMALL_MODEL])
        table = make_fake_release(cfg, tmp)
        train(cfg, datamodule=FusionDataModule(cfg, source=SubjectSource(cfg, table=table)))
        yield cfg, table, cfg.release_cache / "runs" / "small"


@pytest.fixture
def patched(trained, monkeypatch):
    import abaw.features.extract as extract

    monkeypatch.setattr(extract, "feature_dir", fake_feature_dir)
    return trained


def test_load_run_rebuilds_the_trained_network(patched):
    import torch

    cfg, table, run = patched
    model, run_cfg = load_run(run)
    assert not model.training
    assert run_cfg.model == cfg.model and run_cfg.train == cfg.train
    state = torch.load(run / "best.ckpt", weights_only=False)["state_dict"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[f"model.{k}"])


def test_predict_subjects_gives_every_frame(patched):
    cfg, table, run = patched
    preds = predict_subjects(run, ["v20", "v21", "v10"], cfg, table=table)
    assert list(preds) == ["v20", "v21", "v10"]
    for s, n in (("v20", 120), ("v21", 40), ("v10", 200)):
        assert preds[s].shape == (n, 2) and preds[s].dtype == np.float32
        assert np.isfinite(preds[s]).all() and (np.abs(preds[s]) < 1).all()
    # The stitched validation predictions saved by training are the same computation.
    saved = pl.read_parquet(run / "val_predictions.parquet").filter(pl.col("subject") == "v10")
    np.testing.assert_allclose(saved.select("pred_v", "pred_a").to_numpy(), preds["v10"], atol=1e-5)


def test_two_identical_runs_ensemble_to_one(patched, tmp_path):
    cfg, table, run = patched
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    one = predict_split(cfg, [run], "test", table=table)
    two = predict_split(cfg, [run, twin], "test", table=table)
    assert list(one) == list(two) == ["v20", "v21"]
    for s in one:
        np.testing.assert_allclose(two[s], one[s], atol=1e-6)
        assert one[s].min() >= -1 and one[s].max() <= 1
    # The ensemble's post-processing searched on pooled validation predictions equals the run's own.
    assert ensemble_postprocess([run, twin], cfg.postprocess).windows == ensemble_postprocess(
        [run], cfg.postprocess).windows


def test_ensemble_postprocess_is_applied_after_averaging(patched, tmp_path):
    from abaw.metrics import PostprocessChoice

    cfg, table, run = patched
    raw = predict_subjects(run, ["v20"], cfg, table=table)["v20"]
    choice = PostprocessChoice.load(run / "postprocess.json")
    out = predict_split(cfg, [run], "test", table=table)["v20"]
    np.testing.assert_allclose(out, np.clip(choice.apply(raw), -1, 1), atol=1e-6)


def test_run_summaries_and_feature_check(patched, tmp_path):
    cfg, table, run = patched
    (summary,) = run_summaries([run])
    assert summary["checkpoint"].endswith("best.ckpt") and len(summary["checkpoint_sha256"]) == 16
    assert set(summary["val"]) >= {"p_va", "ccc_v", "ccc_a", "p_va_post"}
    assert summary["features"]["visual"]["name"] == "fake-visual"
    assert summary["postprocess"]["format"] == "abaw-postprocess/1"
    # A run predicting from features other than those it was trained on is refused, naming both.
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    data = json.loads((moved / "summary.json").read_text())
    data["features"]["visual"]["name"] = "resnet50-0123456789ab"
    (moved / "summary.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="resnet50-0123456789ab.*fake-visual"):
        predict_subjects(moved, ["v20"], cfg, table=table)
    with pytest.raises(FileNotFoundError, match="no best.ckpt"):
        load_run(tmp_path)


def test_cli_predict_writes_frame_axis_parquet(patched, monkeypatch):
    import abaw.data.index as index

    cfg, table, run = patched
    monkeypatch.setattr(index, "load_index", lambda c: type("R", (), {"table": table})())
    args = argparse.Namespace(runs=[str(run)], split="test")
    assert cli_predict(with_overrides(cfg, []), args) == 0
    out = pl.read_parquet(run / "predictions" / "test.parquet")
    assert out.columns == ["subject", "frame", "valence", "arousal"]
    assert out.group_by("subject").len().sort("subject").rows() == [("v20", 120), ("v21", 40)]
    assert out.filter(pl.col("subject") == "v21")["frame"].to_list() == list(range(40))
    meta = json.loads((run / "predictions" / "test.json").read_text())
    assert meta["frames"] == 160 and meta["runs"][0]["run"] == str(run)


def test_prediction_takes_the_caches_from_the_runs_features_record(trained, monkeypatch):
    """Issue 10.15: once a run is trained, predicting on its release reads the caches its features.json
    names; the backbone config is never re-resolved (a moved weights file no longer matters)."""
    import abaw.features.extract as extract

    cfg, table, run = trained
    record = json.loads((run / "features.json").read_text())
    assert record["visual"]["dir"] == str(fake_feature_dir(cfg, "visual").resolve())

    def moved(cfg_, kind):
        raise FileNotFoundError(f"weights file of the {kind} backbone moved")

    monkeypatch.setattr(extract, "feature_dir", moved)
    preds = predict_subjects(run, ["v20", "v21"], table=table)
    assert {s: len(p) for s, p in preds.items()} == {"v20": 120, "v21": 40}
