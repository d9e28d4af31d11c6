"""Optuna studies: space checking, pruning, parallel workers on one SQLite study, restart after a kill,
failing trials, per-trial sampler seeds, the exported best config (in the release cache) training as it
is. Several machines on PostgreSQL / a journal file: tests/test_postgres_study.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from abaw.config import ConfigError, load_config, with_overrides
from abaw.tuning.pruning import OptunaPruning
from abaw.tuning.space import load_space
from abaw.tuning.study import (
    cli_tune,
    export_best,
    export_path,
    fail_reason,
    journal_path,
    open_study,
    report,
    run_study,
    storage_url,
)

REPO = Path(__file__).resolve().parent.parent


def write_space(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def tune_cfg(synth_features_cfg, tmp_path):
    """Tiny trials: one short epoch each, a two-parameter space, outputs in tmp_path."""
    space = write_space(
        tmp_path / "space.yaml",
        "params:\n"
        "  train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}\n"
        "  model.iterations: {type: int, low: 1, high: 2}\n"
        "fixed:\n  train.max_epochs: 1\n",
    )
    return with_overrides(
        synth_features_cfg,
        [f"tune.space={space}", f"tune.export_dir={tmp_path / 'tuned'}", "tune.study=t",
         f"tune.storage=sqlite:///{tmp_path / 'study.db'}", "tune.pruner=none", "model.d_audio=16",
         "model.d_visual=16", "model.head_hidden=16", "tune.heartbeat_s=4"],
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("params:\n  train.lrr: {type: float, low: 0.1, high: 1}\n", "does not fit the run config"),
        ("params:\n  train.lr: {type: float, low: 1, high: 0.1}\n", "needs low < high"),
        ("params:\n  train.lr: {type: float, low: 0, high: 1, log: true}\n", "low must be > 0"),
        ("params:\n  model.variant: {type: categorical}\n", "needs choices"),
        ("params:\n  model.variant: {type: choice, choices: [a]}\n", "use float, int or categorical"),
        ("parms: {}\n", "unknown top-level key"),
    ],
)
def test_bad_space_names_file_and_parameter(tmp_path, text, message):
    path = write_space(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=message) as err:
        load_space(path, load_config(None))
    assert "bad.yaml" in str(err.value)


def test_shipped_space_fits_the_config():
    space = load_space("tune/default.yaml", load_config("configs/demo.yaml"))
    assert {"train.lr", "model.variant", "train.window"} <= {p.name for p in space.params}


def _fake_trainer(value: float, epoch: int) -> SimpleNamespace:
    import torch

    return SimpleNamespace(sanity_checking=False, current_epoch=epoch, should_stop=False,
                           callback_metrics={"val/p_va": torch.tensor(value)})


def test_pruner_prunes_a_clearly_bad_trial():
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    for _ in range(2):  # two good finished trials set the median
        t = study.ask()
        for epoch in range(4):
            t.report(0.6 + 0.05 * epoch, epoch)
        study.tell(t, 0.75)
    bad = study.ask()
    cb = OptunaPruning(bad)
    for epoch in range(4):
        trainer = _fake_trainer(0.01, epoch)
        cb.on_validation_end(trainer, None)
        if cb.pruned:
            break
    assert cb.pruned and trainer.should_stop
    assert cb.reported_epochs == 2  # warm-up epoch 0 is never pruned; epoch 1 is
    good = study.ask()
    cb_good = OptunaPruning(good)
    for epoch in range(4):
        cb_good.on_validation_end(_fake_trainer(0.9, epoch), None)
    assert not cb_good.pruned


def test_sanity_check_epochs_are_not_reported():
    study = optuna.create_study(direction="maximize")
    cb = OptunaPruning(study.ask())
    trainer = _fake_trainer(0.5, 0)
    trainer.sanity_checking = True
    cb.on_validation_end(trainer, None)
    assert cb.reported_epochs == 0


def test_two_workers_share_one_sqlite_study(tune_cfg):
    cfg = with_overrides(tune_cfg, ["tune.workers=2", "tune.n_trials=4"])
    study = run_study(cfg)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4, [t.state for t in trials]
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs for t in trials]
    # No trial ran twice: each has its own run folder, and both workers took part.
    assert len({t.user_attrs["run_dir"] for t in trials}) == 4
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 2
    # Each worker samples its own stream: no two trials propose the same parameters.
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    # Running again continues the same study: it already holds n_trials, so nothing is added.
    assert len(run_study(cfg).get_trials(deepcopy=False)) == 4
    # The exported best config trains as it is (only the release and cache locations are given).
    exported = Path(cfg.tune.export_dir) / "t.yaml"
    assert exported.is_file()
    from abaw.training.train import train

    best = load_config(exported, [f"data.root={cfg.data.root}", f"cache_root={cfg.cache_root}"])
    assert best.train.lr == pytest.approx(study.best_params["train.lr"])
    metrics, artifacts = train(best)
    assert -1.0 <= metrics["p_va"] <= 1.0 and artifacts["best"].is_file()
    text = report(cfg)
    assert "complete 4" in text and "history.png" in text


def test_failing_trials_are_recorded_and_the_study_goes_on(tune_cfg, tmp_path):
    # Paper mode welds the window length into the weights: a mismatching length fails every trial.
    space = write_space(
        tmp_path / "failing.yaml",
        "params:\n  model.paper_length: {type: categorical, choices: [7]}\n"
        "fixed:\n  model.paper_mode: true\n  train.max_epochs: 1\n",
    )
    cfg = with_overrides(tune_cfg, [f"tune.space={space}", "tune.n_trials=2", "tune.study=failing"])
    study = run_study(cfg)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all("expected L=7" in fail_reason(study, t) for t in trials), [t.user_attrs for t in trials]
    assert export_best(cfg, study) is None  # nothing completed, nothing exported


def test_killed_study_restarts_keeping_finished_trials(tune_cfg):
    cfg = with_overrides(tune_cfg, ["tune.n_trials=3", "tune.study=killed"])
    cmd = [sys.executable, "-m", "abaw.cli", "tune", "-c", "configs/test.yaml",
           f"data.root={cfg.data.root}", f"cache_root={cfg.cache_root}", f"tune.space={cfg.tune.space}",
           f"tune.export_dir={cfg.tune.export_dir}", f"tune.storage={cfg.tune.storage}",
           "tune.study=killed", "tune.n_trials=3", "tune.pruner=none", "model.d_audio=16",
           "model.d_visual=16", "model.head_hidden=16", "tune.heartbeat_s=4"]
    open_study(cfg)  # the schema exists before two processes touch the file
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    study = None
    deadline = time.time() + 240
    try:
        # Kill it while its second trial runs (the first one has finished).
        while time.time() < deadline:
            time.sleep(0.5)
            try:
                study = optuna.load_study(study_name="killed", storage=storage_url(cfg))
            except KeyError:
                continue
            states = [t.state for t in study.get_trials(deepcopy=False)]
            if states[:1] == [TrialState.COMPLETE] and TrialState.RUNNING in states:
                break
        else:
            pytest.fail("the study never reached its second trial")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = [t.number for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    assert killed
    study = run_study(cfg)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert trials[0].state == TrialState.COMPLETE  # finished work is kept
    for n in killed:
        assert trials[n].state == TrialState.FAIL and "died" in fail_reason(study, trials[n])
    finished = [t for t in trials.values() if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    assert len(finished) == 3  # the restart topped the study up to n_trials


def _params(study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False)]


def test_restarted_study_draws_new_trials_and_exports_into_the_release_cache(tune_cfg, capsys):
    """Issue 10 items 7-8: a continued study does not replay its first trials' parameters; the best trial
    goes next to the study in the release cache (its path printed), never into the repository."""
    cfg = with_overrides(tune_cfg, ["tune.export_dir=", "tune.n_trials=2", "tune.study=restart"])
    configs_before = sorted((p, p.stat().st_mtime_ns) for p in (REPO / "configs").rglob("*"))
    args = SimpleNamespace(report=False)
    assert cli_tune(cfg, args) == 0
    assert cli_tune(with_overrides(cfg, ["tune.n_trials=4"]), args) == 0
    study = open_study(cfg)
    assert len(study.get_trials(deepcopy=False)) == 4
    assert len(set(_params(study))) == 4, _params(study)
    exported = export_path(cfg)
    assert exported == cfg.release_cache / "studies" / "restart" / "best.yaml" and exported.is_file()
    assert f"make train CONFIG={exported}" in capsys.readouterr().out
    assert sorted((p, p.stat().st_mtime_ns) for p in (REPO / "configs").rglob("*")) == configs_before
    best = load_config(exported, [f"data.root={cfg.data.root}", f"cache_root={cfg.cache_root}"])
    assert best.train.lr == pytest.approx(study.best_params["train.lr"])


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_a_pruned_trial_skips_the_post_training_report(tune_cfg, monkeypatch):
    from abaw.tuning import study as study_mod

    monkeypatch.setattr(study_mod, "make_pruner", lambda cfg: _AlwaysPrune())
    cfg = with_overrides(tune_cfg, ["tune.n_trials=1", "tune.study=pruned", "tune.max_epochs=2"])
    study = run_study(cfg)
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.state == TrialState.PRUNED and trial.user_attrs["epochs"] == 1
    run = Path(trial.user_attrs["run_dir"])
    assert (run / "config.yaml").is_file()  # it trained there ...
    assert not (run / "summary.json").exists() and not list(run.glob("*.png"))  # ... and reported nothing


def test_an_absolute_journal_url_stays_absolute(tune_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "tuned" if (tmp_path / "tuned").is_dir() else tmp_path)
    target = tmp_path / "journals" / "study.log"
    cfg = with_overrides(tune_cfg, [f"tune.storage=journal://{target}", "tune.study=j"])
    assert journal_path(f"journal://{target}") == target
    open_study(cfg)
    assert target.is_file()
    assert journal_path("journal:rel.log") == Path("rel.log") and journal_path("x/study.log") == Path("x/study.log")
    assert journal_path("sqlite:///x.db") is None


def test_a_reused_run_reports_its_recorded_epochs_to_the_pruner(tune_cfg, tmp_path):
    """A trial whose run is already finished (same identity, e.g. the same study name and seed on a new
    storage) is not retrained, but its recorded validation curve still reaches the trial and the pruner
    (CI failure: a reused run left a COMPLETE trial with no intermediate values)."""
    cfg = with_overrides(tune_cfg, ["tune.n_trials=2", "tune.study=reuse", "tune.max_epochs=2"])
    first = run_study(cfg)
    runs = {t.number: Path(t.user_attrs["run_dir"]) for t in first.get_trials(deepcopy=False)}
    stamps = {n: (r / "best.ckpt").stat().st_mtime_ns for n, r in runs.items()}
    again = run_study(with_overrides(cfg, [f"tune.storage=sqlite:///{tmp_path / 'other.db'}"]))
    for a, b in zip(first.get_trials(deepcopy=False), again.get_trials(deepcopy=False), strict=True):
        assert b.params == a.params and b.user_attrs["run_dir"] == str(runs[a.number])
        assert (runs[a.number] / "best.ckpt").stat().st_mtime_ns == stamps[a.number]  # not retrained
        assert b.intermediate_values == pytest.approx(a.intermediate_values) and len(b.intermediate_values) == 2
        assert b.state == a.state == TrialState.COMPLETE and b.value == pytest.approx(a.value)


def test_a_replayed_curve_is_pruned_where_training_would_have_been():
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1))
    good = study.ask()
    OptunaPruning(good).replay([(0, 0.6), (1, 0.7), (2, 0.8)])
    study.tell(good, 0.8)
    cb = OptunaPruning(study.ask())
    with pytest.raises(optuna.TrialPruned):
        cb.replay([(0, 0.1), (1, 0.1), (2, 0.1)])
    assert cb.pruned and cb.reported_epochs == 2  # epoch 0 is warm-up; pruned at epoch 1
