"""``abaw ablate`` on the tiny release: the table, the paired comparison, and cached cells."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from abaw.ablation import run as ablation
from abaw.ablation.table import markdown, summarise
from abaw.config import with_overrides
from abaw.errors import AbawError


def test_parse_variant():
    assert ablation.parse_variant("rjca") == ablation.Variant("rjca", "rjca", ())
    v = ablation.parse_variant("alive=grjca_hier,model.gate_norm=true,model.gate_tau=1.0")
    assert v == ablation.Variant("alive", "grjca_hier", ("model.gate_norm=true", "model.gate_tau=1.0"))
    with pytest.raises(ablation.AblationError, match="nope"):
        ablation.parse_variant("x=nope")
    with pytest.raises(ablation.AblationError, match="key=value"):
        ablation.parse_variant("x=rjca,model.gate_norm")


def test_summary_pairs_seeds_against_the_reference():
    rows = []
    for seed, (r, g) in enumerate([(0.50, 0.55), (0.60, 0.62), (0.40, 0.39)]):
        rows.append({"level": "strong", "variant": "rjca", "seed": seed, "val_p_va": r, "test_p_va": r})
        rows.append({"level": "strong", "variant": "grjca", "seed": seed, "val_p_va": g, "test_p_va": g,
                     "gate/visual/iter/shift": -0.1 * seed})
    t = summarise(rows, "rjca")
    g = t.filter(pl.col("variant") == "grjca").row(0, named=True)
    diffs = np.array([0.05, 0.02, -0.01])
    assert g["diff_mean"] == pytest.approx(diffs.mean())
    assert g["diff_sd"] == pytest.approx(diffs.std(ddof=1))
    assert g["wins"] == "2/3"
    assert g["test_p_va_mean"] == pytest.approx(np.mean([0.55, 0.62, 0.39]))
    assert g["gate/visual/iter/shift"] == pytest.approx(-0.1)
    r = t.filter(pl.col("variant") == "rjca").row(0, named=True)
    assert np.isnan(r["diff_mean"]) and r["wins"] == ""
    text = markdown(t)
    assert "| strong | grjca | 3 |" in text and "+0.020" in text


def test_levels_are_releases_of_the_same_seed(synth_cfg):
    cfg, generated = ablation.level_config(synth_cfg, "strong")
    assert generated and cfg.synth.face_degraded == cfg.synth.voice_degraded == ablation.LEVELS["strong"]
    meta = json.loads((synth_cfg.data_root / "ground_truth" / "traps.json").read_text())
    assert (cfg.synth.seed, cfg.synth.scale) == (meta["seed"], meta["scale"])
    assert cfg.release_name != synth_cfg.release_name
    clean, generated = ablation.level_config(synth_cfg, "clean")
    assert clean.data_root == synth_cfg.data_root and not generated
    with pytest.raises(ablation.AblationError, match="huge"):
        ablation.level_config(synth_cfg, "huge")


def test_cell_names_follow_the_run_identity(synth_features_cfg):
    """Cells are named by what changes training: another seed or lr is another cell; a setting that does
    not reach training (tuning, the fine-tuning of features the cell does not read) is the same cell."""
    cfg = synth_features_cfg
    v = ablation.parse_variant("rjca")
    a = ablation.cell_config(cfg, v, 0)
    assert a.train.name.startswith("ablate-rjca-s0-") and a.seed == 0 and a.model.variant == "rjca"
    assert ablation.cell_config(cfg, v, 0).train.name == a.train.name
    assert ablation.cell_config(cfg, v, 1).train.name != a.train.name
    other = ablation.cell_config(cfg, ablation.parse_variant("rjca=rjca,train.lr=1e-3"), 0)
    assert other.train.name != a.train.name
    unrelated = with_overrides(cfg, ["tune.n_trials=99", "finetune.samples_per_epoch=123"])
    assert ablation.cell_config(unrelated, v, 0).train.name == a.train.name


def test_ablation_table_and_cached_rerun(synth_features_cfg, tmp_path, monkeypatch):
    cfg = synth_features_cfg
    out = tmp_path / "abl"
    paths = ablation.run_ablation(cfg, ["concat", "grjca_hier"], [0, 1], ["release"], out, reference="concat")
    for key in ("results", "table", "table_csv", "gates_plot", "timing"):
        assert paths[key].is_file(), key
    rows = pl.read_csv(paths["results"])
    assert rows.height == 4 and set(rows["variant"]) == {"concat", "grjca_hier"}
    assert np.isfinite(rows["test_p_va"].to_numpy()).all() and np.isfinite(rows["val_p_va"].to_numpy()).all()
    gated = rows.filter(pl.col("variant") == "grjca_hier")
    assert np.isfinite(gated["gate/visual/iter/attended"].to_numpy()).all()
    text = paths["table"].read_text()
    assert "| release | grjca_hier | 2 |" in text
    # Every run folder has its summary (with gate diagnostics for the gated variant).
    runs = cfg.release_cache / "runs"
    for name in rows["run"]:
        summary = json.loads((runs / name / "summary.json").read_text())
        assert ("visual/iter/attended" in summary["gates"]) == name.startswith("ablate-grjca_hier")

    # A second call trains nothing and scores nothing again: train() returns the finished runs as they
    # are, and the test scores are read back.
    def boom(*a, **k):
        raise AssertionError("a cached cell was recomputed")

    monkeypatch.setattr("abaw.training.train.build_trainer", boom)
    monkeypatch.setattr("abaw.training.train.FusionDataModule", boom)
    monkeypatch.setattr("abaw.submit.predict.load_run", boom)
    again = ablation.run_ablation(cfg, ["concat", "grjca_hier"], [0, 1], ["release"], out, reference="concat")
    assert_frame_equal(pl.read_csv(again["results"]), rows, check_column_order=False)
    # The table so far: cells never trained (seed 2) are left out, nothing is trained.
    part = ablation.run_ablation(cfg, ["concat", "grjca_hier"], [0, 2], ["release"], tmp_path / "part",
                                 reference="concat", train_missing=False)
    assert pl.read_csv(part["results"])["seed"].to_list() == [0, 0]


def test_cells_trained_by_worker_processes_are_the_cells_a_single_process_reuses(synth_features_cfg, tmp_path,
                                                                                monkeypatch):
    cfg = synth_features_cfg
    paths = ablation.run_ablation(cfg, ["concat"], [5, 6], ["release"], tmp_path / "w2", reference="concat",
                                  workers=2)
    rows = pl.read_csv(paths["results"])
    assert rows["seed"].to_list() == [5, 6] and np.isfinite(rows["test_p_va"].to_numpy()).all()
    assert json.loads(paths["timing"].read_text())["workers"] == 2

    def boom(*a, **k):
        raise AssertionError("a cell trained by a worker was trained again")

    monkeypatch.setattr("abaw.training.train.build_trainer", boom)
    again = ablation.run_ablation(cfg, ["concat"], [5, 6], ["release"], tmp_path / "w1", reference="concat")
    assert_frame_equal(pl.read_csv(again["results"]), rows, check_column_order=False)


@pytest.mark.parametrize("finetuned, tunes", [("", False), ("faces", True), ("/elsewhere/faces", False)])
def test_a_level_is_fine_tuned_when_the_config_asks(synth_cfg, monkeypatch, finetuned, tunes):
    """`make ablate` runs with the demo config, which asks for fine-tuned features: each generated level
    gets its own fine-tuning (by name, on its training crops) before extraction, as `make features` does;
    a path names a fine-tuning made elsewhere, used as it is."""
    from types import SimpleNamespace

    calls = []
    monkeypatch.setattr("abaw.finetune.run.finetune", lambda c: calls.append(("finetune", c.release_name)))
    monkeypatch.setattr("abaw.features.extract.extract_features",
                        lambda c, kind, index=None: calls.append((kind, c.release_name)) or SimpleNamespace(ok=True))
    cfg = with_overrides(synth_cfg, [f"features.visual.finetuned={finetuned}"])
    ablation.prepare_level(cfg, generate_release=False)
    kinds = [k for k, _ in calls]
    assert kinds == (["finetune"] if tunes else []) + ["visual", "audio"]


def test_a_cell_failing_in_a_worker_fails_the_ablation_with_its_error(synth_features_cfg, tmp_path):
    bad = with_overrides(synth_features_cfg, [f"cache_root={tmp_path / 'empty-cache'}", "train.name=bad"])
    cells = [ablation.Cell("release", "bad", seed, bad) for seed in (0, 1, 2)]
    with pytest.raises(AbawError, match="abaw features"):
        ablation.run_cells(cells, workers=2)
