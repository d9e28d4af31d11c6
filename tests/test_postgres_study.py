"""One study, two machines: separate `abaw tune` processes (no shared parent) on a PostgreSQL server and
on a journal file (issue 14 item 1).

The PostgreSQL fixture starts a private server from the Debian binaries (initdb/pg_ctl of
postgresql-15): a temporary data directory, a Unix socket in it (no TCP port to collide), a fresh
database; stopped and deleted afterwards. PostgreSQL refuses to run as root, so under root (CI) the
server runs as ``nobody`` through ``setpriv``/``runuser``. Missing binaries or driver skip with a reason.

Both storages get the same scenario: two workers fill one study to its exact total with distinct
parameters, both feeding the pruner; one worker is killed with SIGKILL mid-trial and the other fails
that trial (Optuna's heartbeat on PostgreSQL, the worker-pid check on the journal, which has no
heartbeat); the survivor is killed too, and a restarted worker tops the study up to its total.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from abaw.tuning.study import fail_reason

REPO = Path(__file__).resolve().parent.parent
PG_BIN = Path(os.environ.get("ABAW_PG_BIN", "/usr/lib/postgresql/15/bin"))
N_TRIALS = 5
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _unprivileged() -> list[str] | None:
    """The prefix that runs a server command as an unprivileged user ([] when we are not root)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv"):
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"]
    return None


@pytest.fixture(scope="module")
def postgres_url():
    """A SQLAlchemy URL of a fresh database on a private PostgreSQL server (stopped afterwards)."""
    missing = [b for b in ("initdb", "pg_ctl", "postgres", "createdb") if not (PG_BIN / b).is_file()]
    if missing:
        pytest.skip(f"PostgreSQL server binaries {missing} not in {PG_BIN} (apt-get install postgresql-15)")
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver is not installed (pip install 'abaw[postgres]')")
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("running as root without setpriv or runuser: PostgreSQL refuses to run as root")
    top = Path(tempfile.mkdtemp(prefix="abaw-pg-"))
    if os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.chown(top, nobody.pw_uid, nobody.pw_gid)
    data, log = top / "data", top / "server.log"

    def server(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=120, cwd=top)

    try:
        server(str(PG_BIN / "initdb"), "-D", str(data), "-U", "abaw", "--auth=trust", "-E", "UTF8", "--no-sync")
        server(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start",
               "-o", f"-k {top} -c listen_addresses='' -c fsync=off -c max_connections=50")
        subprocess.run([str(PG_BIN / "createdb"), "-h", str(top), "-U", "abaw", "abaw_study"], check=True,
                       capture_output=True, timeout=60)
        yield f"postgresql+psycopg2://abaw@/abaw_study?host={top}"
    except subprocess.CalledProcessError as e:
        pytest.fail(f"PostgreSQL did not start: {e.cmd}: {e.stderr.decode(errors='replace')[-800:]}"
                    + (f"\n{log.read_text()[-800:]}" if log.exists() else ""))
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*prefix, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60, cwd=top)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(params=["postgres", "journal"])
def storage(request, tmp_path):
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"journal://{tmp_path / 'journal' / 'study.log'}"


class Machine:
    """One `abaw tune` process started like a separate machine: its own session, no shared parent."""

    def __init__(self, cmd: list[str], log: Path):
        self.log = log
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.pid = self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(30)

    def tail(self) -> str:
        return self.log.read_text()[-1500:] if self.log.exists() else ""


def _trials(url, name: str) -> tuple[optuna.Study | None, list]:
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return None, []
    return study, study.get_trials(deepcopy=False)


def _wait(what: str, until, machines: list[Machine], timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = until()
        if found is not None:
            return found
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}\n" + "\n".join(f"--- pid {m.pid}:\n{m.tail()}" for m in machines))


def test_two_machines_fill_one_study(storage, synth_features_cfg, tmp_path):
    cfg = synth_features_cfg
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}\n"
                     "  model.dropout: {type: float, low: 0.0, high: 0.4}\n")
    # A study name of its own per storage: the trials' runs must train here, not be reused from the other
    # storage's study on the same release cache (a reused run finishes at once, and nothing is mid-trial).
    name = "two-journal" if storage.startswith("journal://") else "two-pg"
    cmd = [sys.executable, "-m", "abaw.cli", "tune", "-c", "configs/test.yaml", "--storage", storage,
           "--study", name, f"data.root={cfg.data.root}", f"cache_root={cfg.cache_root}",
           f"tune.space={space}", f"tune.n_trials={N_TRIALS}", "tune.heartbeat_s=4", "tune.max_epochs=2",
           "tune.pruner=median", "tune.pruner_startup_trials=1", "tune.pruner_warmup_epochs=0",
           "model.d_audio=16", "model.d_visual=16", "model.head_hidden=16", f"tune.export_dir={tmp_path}"]
    # One storage object for all the polling below (a URL would open a new connection pool each time).
    if storage.startswith("journal://"):
        path = Path(storage.removeprefix("journal://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        load_url = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    else:
        load_url = optuna.storages.RDBStorage(storage)
    a = Machine(cmd, tmp_path / "a.log")
    b = Machine(cmd, tmp_path / "b.log")
    machines = [a, b]
    try:
        # Kill A while it runs a trial, once some trial has finished (so the study holds real work).
        def a_mid_trial():
            _, trials = _trials(load_url, name)
            done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
            mine = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("worker_pid") == a.pid]
            return mine[0].number if done and mine else None

        killed = _wait("worker A to run a trial after a finished one", a_mid_trial, machines)
        a.kill()

        # B (alive) fails A's trial: by heartbeat on PostgreSQL, by the pid check on the journal.
        def failed_by_b():
            study, trials = _trials(load_url, name)
            t = next(t for t in trials if t.number == killed)
            return (study, t) if t.state == TrialState.FAIL else None

        study, trial = _wait(f"worker B to fail A's trial {killed}", failed_by_b, machines)
        reason = fail_reason(study, trial)
        assert "died" in reason and str(a.pid) in reason, reason
        if storage.startswith("postgresql"):
            assert "heartbeat" in reason, reason
        assert b.proc.poll() is None or b.proc.returncode == 0, b.tail()

        # Kill B too (mid-trial when the study is not full yet), then restart one worker: it resumes the
        # study up to its total.
        def b_mid_trial_or_done():
            _, trials = _trials(load_url, name)
            if b.proc.poll() is not None or any(t.state == TrialState.RUNNING and
                                                t.user_attrs.get("worker_pid") == b.pid for t in trials):
                return True
            return None

        _wait("worker B to run a trial", b_mid_trial_or_done, machines)
        b.kill()
        c = Machine(cmd, tmp_path / "c.log")
        machines.append(c)
        assert c.proc.wait(300) == 0, c.tail()
    finally:
        for m in machines:
            m.kill()

    study, trials = _trials(load_url, name)
    states = [t.state for t in trials]
    assert len(trials) == N_TRIALS and all(s in FINISHED for s in states), states  # the exact total
    assert trials[killed].state == TrialState.FAIL
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == N_TRIALS, params  # no machine replayed another's (or its own) trials
    reported = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert all(t.intermediate_values for t in reported)  # every epoch went to the shared pruner
    assert {a.pid, b.pid} <= {t.user_attrs.get("worker_pid") for t in trials if t.intermediate_values}
    assert (tmp_path / f"{name}.yaml").is_file() or not any(t.state == TrialState.COMPLETE for t in trials)
