"""The command line: user errors as one line with exit 2 (contract C5), overrides anywhere on the line."""

from __future__ import annotations

import importlib

import pytest

from abaw import cli
from abaw.errors import AbawError

RECORDED: list = []


def _record(cfg, args) -> int:
    RECORDED.append((cfg, args))
    return 0


def _raise_user_error(cfg, args) -> int:
    raise _Refused("video 1-30-1280x720: something is wrong\nsecond line of the message")


def _raise_bug(cfg, args) -> int:
    raise RuntimeError("a bug keeps its traceback")


class _Refused(ValueError, AbawError):
    pass


@pytest.fixture
def fake_stage(monkeypatch):
    def install(func: str, stage: str = "tune") -> None:
        monkeypatch.setitem(cli.COMMANDS, stage, (__name__, func, "fake"))

    RECORDED.clear()
    return install


@pytest.mark.parametrize(
    "module, name, base",
    [
        ("abaw.config", "ConfigError", ValueError),
        ("abaw.data.annotations", "AnnotationError", ValueError),
        ("abaw.data.release", "ReleaseError", ValueError),
        ("abaw.data.probe", "ProbeError", RuntimeError),
        ("abaw.features.registry", "WeightsError", ValueError),
        ("abaw.features.cache", "CacheError", RuntimeError),
        ("abaw.features.audio_decode", "AudioDecodeError", RuntimeError),
        ("abaw.submit.score", "ScoreError", ValueError),
        ("abaw.submit.submission", "SubmissionError", RuntimeError),
        ("abaw.submit.writer", "SubmissionWriteError", ValueError),
        ("abaw.submit.package", "SubmissionExistsError", FileExistsError),
        ("abaw.submit.validate", "ReferenceFileError", ValueError),
    ],
)
def test_user_error_classes_are_abaw_errors_and_keep_their_base(module, name, base):
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, AbawError) and issubclass(cls, base)


def test_a_missing_release_root_is_one_line_and_exit_2(tmp_path, capsys):
    rc = cli.main(["data", "--data", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("abaw data: ") and "missing" in err


def test_a_config_error_names_the_key(capsys):
    assert cli.main(["data", "train.lrr=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("abaw data: ") and "lrr" in err and "\n" not in err


def test_a_stage_user_error_is_printed_as_one_line(fake_stage, capsys):
    fake_stage("_raise_user_error", "train")
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert err == "abaw train: video 1-30-1280x720: something is wrong second line of the message\n"


def test_a_bug_keeps_its_traceback(fake_stage):
    fake_stage("_raise_bug", "train")
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["train"])


@pytest.mark.parametrize(
    "argv",
    [
        ["tune", "--study", "s", "train.max_epochs=3"],
        ["tune", "train.max_epochs=3", "--study", "s"],
        ["tune", "model.dropout=0.1", "--study", "s", "train.max_epochs=3", "--n-trials", "2"],
    ],
)
def test_overrides_are_accepted_anywhere(fake_stage, argv):
    fake_stage("_record")
    assert cli.main(argv) == 0
    cfg, args = RECORDED[-1]
    assert args.study == "s" and cfg.train.max_epochs == 3
    if "model.dropout=0.1" in argv:
        assert cfg.model.dropout == pytest.approx(0.1) and args.n_trials == 2


def test_overrides_after_a_list_option_are_not_taken_as_its_values():
    args = cli.parse_args(["predict", "--runs", "runs/a", "runs/b", "train.lr=0.01", "--split", "val"])
    assert args.runs == ["runs/a", "runs/b"] and args.split == "val" and args.overrides == ["train.lr=0.01"]


def test_urls_and_paths_are_not_overrides():
    args = cli.parse_args(["tune", "--storage", "postgresql://u@h/db?sslmode=require", "tune.study=x"])
    assert args.storage == "postgresql://u@h/db?sslmode=require" and args.overrides == ["tune.study=x"]


def test_labelled_ablation_variants_are_arguments_not_overrides():
    """``label=variant,key=value`` has an ``=`` but names no config key: it must reach --variants."""
    args = cli.parse_args(["ablate", "--variants", "paper=grjca_hier,model.gate_tau=0.1", "rjca",
                           "train.max_epochs=3", "seed=2"])
    assert args.variants == ["paper=grjca_hier,model.gate_tau=0.1", "rjca"]
    assert args.overrides == ["train.max_epochs=3", "seed=2"]


def test_train_without_features_is_one_line_and_exit_2(synth_release, tmp_path, capsys):
    rc = cli.main(["train", "-c", "configs/test.yaml", "--data", str(synth_release),
                   f"cache_root={tmp_path / 'empty-cache'}"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("abaw train: ") and err.count("\n") == 1 and "abaw features" in err, err
