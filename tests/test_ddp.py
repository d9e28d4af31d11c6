"""DDP: validation windows sharded over ranks and gathered back (every frame scored once), and a real
2-process CPU (gloo) training run on the tiny release that matches 1 process, writes its artifacts once
and resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from training_fakes import PointwiseModel, fake_feature_dir, make_fake_release

from abaw.config import load_config
from abaw.training.datamodule import FusionDataModule, ShardSampler, SubjectSource, WindowDataset
from abaw.training.inference import forward_batch, stitch_batch
from abaw.training.windows import Stitcher

REPO = Path(__file__).resolve().parent.parent
SMALL_MODEL = ["model.d_audio=16", "model.d_visual=16", "model.tcn_layers=2", "model.tcn_kernel=3",
               "model.iterations=2", "model.head_hidden=16"]
# |P_VA(2 processes) - P_VA(1 process)| on the tiny release after 2 epochs. Not 0: each rank draws its own
# dropout masks, and the CCC loss of two half batches, averaged, is not the CCC of the whole batch.
DDP_TOLERANCE = 0.05


@pytest.fixture
def fake_dm(tmp_path, monkeypatch):
    import abaw.features.extract as extract

    monkeypatch.setattr(extract, "feature_dir", fake_feature_dir)
    cfg = load_config("configs/test.yaml", [f"cache_root={tmp_path / 'cache'}", "train.window=64",
                                            "train.hop=24", "train.batch_size=4"])
    table = make_fake_release(cfg, tmp_path)
    return FusionDataModule(cfg, source=SubjectSource(cfg, table=table))


def _stitch(model, ds: WindowDataset, indices: list[int], batch_size: int) -> tuple[Stitcher, int]:
    st = Stitcher()
    batches = 0
    for a in range(0, len(indices), batch_size):
        batch = ds.__getitems__(indices[a:a + batch_size])
        stitch_batch(st, batch, forward_batch(model, batch))
        batches += 1
    return st, batches


@pytest.mark.parametrize("world", [2, 3, 4])
def test_sharded_validation_gathers_every_frame_once(fake_dm, world):
    """Each rank scores its share of the evaluation windows (fillers even out the batch counts but are
    not stitched); merging the ranks' stitchers gives exactly the single-process frames and counts."""
    torch.manual_seed(0)
    model = PointwiseModel().eval()
    dm = fake_dm
    ds = WindowDataset(dm.val_subjects, dm.val_windows)
    whole, _ = _stitch(model, ds, list(range(len(ds))), 4)
    merged = Stitcher()
    batch_counts, seen = set(), []
    for rank in range(world):
        indices = list(ShardSampler(len(ds), rank, world))
        seen += [i for i in indices if i < len(ds)]
        st, n = _stitch(model, ds, indices, 4)
        batch_counts.add(n)
        merged.merge(st.state())
    assert sorted(seen) == list(range(len(ds)))  # every window on exactly one rank
    assert len(batch_counts) == 1  # equal batch counts: no rank waits in a collective
    assert sorted(merged.subjects()) == sorted(whole.subjects())
    for s in whole.subjects():
        np.testing.assert_array_equal(merged._count[s], whole._count[s])  # no frame counted twice
        np.testing.assert_allclose(merged.mean(s), whole.mean(s), atol=1e-6)
        np.testing.assert_array_equal(merged.fixed(s, "mask"), whole.fixed(s, "mask"))


def test_the_global_batch_must_divide_over_the_ranks(fake_dm):
    from abaw.errors import AbawError

    dm = fake_dm
    dm._world = lambda: (0, 3)  # batch_size=4 over 3 processes
    with pytest.raises(AbawError, match="batch_size=4 .* 3 processes"):
        dm.rank_batch_size()
    dm._world = lambda: (1, 2)
    assert dm.rank_batch_size() == 2


def _cli_train(cfg, overrides: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "abaw.cli", "train", "--config", "configs/test.yaml",
           f"data.root={cfg.data.root}", f"cache_root={cfg.cache_root}", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_ddp_two_cpu_processes_match_one_write_once_and_resume(synth_features_cfg):
    # Both runs in their own processes: nothing of Lightning's global state leaks into this one.
    common = [*SMALL_MODEL, "train.max_epochs=2", "train.patience=0", "train.accelerator=cpu",
              "train.progress_bar=false", "train.batch_size=8"]
    single = _cli_train(synth_features_cfg, [*common, "train.name=ddp-1", "train.devices=1"])
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    runs = synth_features_cfg.release_cache / "runs"
    m1 = json.loads((runs / "ddp-1" / "summary.json").read_text())["metrics"]

    ddp = [*common, "train.name=ddp-2", "train.devices=2", "train.strategy=ddp"]
    first = _cli_train(synth_features_cfg, [*ddp, "train.session_epochs=1"])  # stops after epoch 1
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "paused after epoch 1 of 2" in first.stdout
    run = runs / "ddp-2"
    assert torch.load(run / "last.ckpt", weights_only=False)["epoch"] == 0
    assert not (run / "summary.json").exists()

    second = _cli_train(synth_features_cfg, ddp)  # resumes from last.ckpt, on 2 processes again
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["metrics"]["epochs"] == 2
    m2 = summary["metrics"]
    print(f"validation P_VA: 1 process {m1['p_va']:.4f}, 2 processes (gloo) {m2['p_va']:.4f}")
    assert abs(m2["p_va"] - m1["p_va"]) <= DDP_TOLERANCE, (m1["p_va"], m2["p_va"])

    # Written once, by rank 0: one row per epoch, one prediction per validation frame, no logger
    # version folders or second copies.
    history = pl.read_csv(run / "metrics.csv").filter(pl.col("val/p_va").is_not_null())
    assert history["epoch"].to_list() == [0, 1]
    preds = pl.read_parquet(run / "val_predictions.parquet")
    assert preds.select("subject", "frame").is_unique().all()
    from abaw.data.index import load_index

    table = load_index(synth_features_cfg).table
    val = json.loads((run / "folds.json").read_text())["val"]
    val_frames = int(table.filter(pl.col("subject").is_in(val))["n_frames"].sum())
    assert preds.height == val_frames
    assert not [p for p in run.rglob("*") if "version_" in p.name or p.name == "lightning_logs"]
