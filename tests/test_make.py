"""Every `make` line the README, docs/readme/*.md or `make help` shows runs as written (contract C4).

Each line is dry-run (`make -n`: recursive `$(MAKE)` lines still recurse, nothing else executes), and
every `abaw` command it would run is parsed by the real command line (`abaw.cli.parse_args`) and, where
it holds no shell variables, its config is loaded with its overrides. Targets are discovered from
`make help`, so targets added later are covered without editing this file. Lines with placeholders
(`<path>`, `...`) are templates, not commands, and are skipped.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from abaw import cli
from abaw.config import load_config

REPO = Path(__file__).resolve().parent.parent
STAMP = ".venv/.installed"  # never remade by a dry run here: the venv is the one running these tests
ABAW_CALL = re.compile(r"\.venv/bin/abaw ((?:(?!\|\||&&|;).)*)")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    env.pop("ARGS", None), env.pop("FLAGS", None), env.pop("DATA", None), env.pop("CONFIG", None)
    return env


def make_n(*words: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", "--no-print-directory", "-o", STAMP, *words], cwd=REPO,
                          capture_output=True, text=True, env=_env(), timeout=60)


def help_targets() -> list[str]:
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True,
                         env=_env(), timeout=60, check=True).stdout
    return re.findall(r"^\s*make (\S+)", out, flags=re.M)


def _help_examples() -> list[str]:
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True,
                         env=_env(), timeout=60, check=True).stdout
    return re.findall(r"\((make [^)]*?)(?::[^)]*)?\)", out)


def _markdown_lines(path: Path) -> list[str]:
    lines, fenced = [], False
    for raw in path.read_text().splitlines():
        if raw.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            if raw.strip().startswith("make "):
                lines.append(raw.split(" #", 1)[0].strip())
            continue
        lines += [m.strip() for m in re.findall(r"`(make [^`]+)`", raw)]
    return lines


def shown_lines() -> list[tuple[str, str]]:
    """(where, line) for every make line shown to a user."""
    found = [("make help", f"make {t}") for t in help_targets()]
    found += [("make help", line) for line in _help_examples()]
    for doc in [REPO / "README.md", *sorted((REPO / "docs" / "readme").glob("*.md"))]:
        found += [(doc.relative_to(REPO).as_posix(), line) for line in _markdown_lines(doc)]
    unique = {}
    for where, line in found:
        if "<" in line or "..." in line:
            continue
        unique.setdefault(line, where)
    return [(where, line) for line, where in unique.items()]


def abaw_calls(dry_run: str) -> list[list[str]]:
    """The argument lists of every `abaw` command in `make -n` output (shell variables read as 0)."""
    calls = []
    for m in ABAW_CALL.finditer(dry_run):
        calls.append(shlex.split(re.sub(r"\$\{?\w+\}?", "0", m.group(1))))
    return calls


def check_call(words: list[str], where: str) -> None:
    try:
        args = cli.parse_args(words)
    except SystemExit as e:  # argparse already printed why
        pytest.fail(f"{where}: `abaw {shlex.join(words)}` does not parse (exit {e.code})")
    overrides = list(args.overrides)
    if getattr(args, "data", None):
        overrides.insert(0, f"data.root={args.data}")
    load_config(args.config, overrides)  # unknown keys or bad values fail here, naming the key


LINES = shown_lines()


def test_the_shown_lines_were_found():
    lines = [line for _, line in LINES]
    assert {"make help", "make demo", "make test", "make tune", "make predict"} <= set(lines)
    assert any("FLAGS=" in line for line in lines)


@pytest.mark.parametrize("where, line", LINES, ids=[line for _, line in LINES])
def test_every_shown_make_line_runs_as_written(where, line):
    words = shlex.split(line)[1:]
    proc = make_n(*words)
    if where == "make help" and len(words) == 1 and proc.returncode != 0 and " needs " in proc.stderr:
        return  # a bare target that needs variables (make video) refuses at once, saying which
    assert proc.returncode == 0, f"{where}: `{line}` fails: {proc.stderr.strip()[-500:]}"
    for call in abaw_calls(proc.stdout):
        check_call(call, f"{where}: `{line}`")


def test_flags_reach_only_the_goal_stage_and_args_reach_every_stage():
    proc = make_n("predict", "FLAGS=--split val", "ARGS=train.lr=0.01 model.dropout=0.2")
    assert proc.returncode == 0, proc.stderr
    calls = abaw_calls(proc.stdout)
    stages = [c[0] for c in calls]
    assert stages[-5:] == ["data", "finetune", "features", "train", "predict"], stages
    for call in calls:
        if call[0] == "synth":
            continue
        assert "train.lr=0.01" in call and "model.dropout=0.2" in call, call
        assert ("--split" in call) == (call[0] == "predict"), call
        check_call(call, "make predict")


def test_flags_of_the_folds_goal_reach_its_train_calls():
    proc = make_n("folds", "K=2", "FLAGS=")
    assert proc.returncode == 0, proc.stderr
    assert [c[0] for c in abaw_calls(proc.stdout)][-1] == "train"


def test_a_flag_in_args_is_refused_with_a_pointer_to_flags():
    proc = make_n("tune", "ARGS=--report")
    assert proc.returncode != 0
    assert "FLAGS" in proc.stderr and "--report" in proc.stderr
