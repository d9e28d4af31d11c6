"""``abaw tune``: an Optuna study whose objective is the same ``train(cfg)`` as ``make train``.

Resumable (the storage holds the study; a rerun continues to ``n_trials`` finished trials), parallel
(several worker processes here, and any number of machines on a shared RDB storage), pruned (a
Lightning callback reports validation P_VA every epoch) and robust (a crashing trial is recorded as
FAIL with its reason, and a worker that died mid-trial has its trial failed on the next start).
"""

from __future__ import annotations

import gc
import inspect
import multiprocessing as mp
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from abaw.config import Config, config_yaml, load_config, to_dict, with_overrides
from abaw.tuning.space import apply, load_space
from abaw.utils import atomic_write_text, file_lock, start_worker_process, thread_share

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


# ---- storage and study ----------------------------------------------------------------------------
def storage_url(cfg: Config) -> str:
    if cfg.tune.storage:
        return cfg.tune.storage
    path = cfg.release_cache / "studies" / f"{cfg.tune.study}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def journal_path(url: str) -> Path | None:
    """The file of a journal storage URL, else None: ``journal:///abs/x.log`` is /abs/x.log (as in a
    file URL), ``journal:rel.log`` and a bare ``*.log`` are relative to the working directory."""
    if url.startswith("journal:"):
        rest = url.removeprefix("journal:")
        return Path(rest.removeprefix("//"))
    return Path(url) if url.endswith(".log") and "://" not in url else None


def _record_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's stale-trial callback: a trial failed by heartbeat gets its reason (a finished trial
    takes no attributes, so the reason is kept on the study, keyed by the trial number)."""
    who = f"{trial.user_attrs.get('worker_host', '?')}:{trial.user_attrs.get('worker_pid', '?')}"
    set_fail_reason(study, trial.number, f"no heartbeat from its worker {who}: it died mid-trial")


def make_storage(cfg: Config) -> optuna.storages.BaseStorage:
    url = storage_url(cfg)
    path = journal_path(url)
    if path is not None:
        # A journal file works for several processes on one filesystem (NFS included) without a server.
        # Optuna has no heartbeat for it: a dead worker's trial is failed by the worker-pid check.
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    # Heartbeats let any worker (on any machine) fail the trials of a worker that died silently: Optuna
    # runs fail_stale_trials before every trial of every worker.
    # Optuna 4.9 renamed the callback argument (the old name is deprecated); both are supported.
    callback = ("heartbeat_stale_trial_callback"
                if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
                else "failed_trial_callback")
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=cfg.tune.heartbeat_s,
        grace_period=2 * cfg.tune.heartbeat_s,
        **{callback: _record_stale},
    )


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A sampler seeded per trial from ``(seed, trial number)``.

    Trial numbers are unique in a study, so a restarted study, several workers and several machines
    never replay one random stream (one seed per process would repeat trials 0, 1... on every start),
    while a study stays reproducible from its seed. The wrapped sampler is built fresh for each trial;
    TPE and random sampling keep no state beyond their random stream (TPE reads the study's history).
    """

    def __init__(self, make: Any, seed: int) -> None:
        self._make = make
        self._seed = seed
        self._inner: optuna.samplers.BaseSampler = make(seed)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._inner = self._make((self._seed * 1_000_003 + trial.number) % (2**32))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)


def make_sampler(cfg: Config) -> optuna.samplers.BaseSampler:
    seed = cfg.tune.seed if cfg.tune.seed >= 0 else cfg.seed
    if cfg.tune.sampler == "random":
        return TrialSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    startup = min(5, cfg.tune.n_trials)
    return TrialSeededSampler(lambda s: optuna.samplers.TPESampler(seed=s, n_startup_trials=startup), seed)


def make_pruner(cfg: Config) -> optuna.pruners.BasePruner:
    t = cfg.tune
    if t.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=t.pruner_startup_trials, n_warmup_steps=t.pruner_warmup_epochs
        )
    if t.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, t.pruner_warmup_epochs))
    return optuna.pruners.NopPruner()


def open_study(cfg: Config) -> optuna.Study:
    url = storage_url(cfg)
    # Two processes creating a fresh SQLite schema at once collide ("table trials already exists"):
    # serialise the creation on this machine.
    lock = (url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else
            str(cfg.release_cache / "studies" / cfg.tune.study)) + ".lock"
    Path(lock).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        try:
            with file_lock(lock):
                return optuna.create_study(
                    study_name=cfg.tune.study,
                    storage=make_storage(cfg),
                    sampler=make_sampler(cfg),
                    pruner=make_pruner(cfg),
                    direction="maximize",
                    load_if_exists=True,
                )
        except Exception as e:
            # Machines that share no lock file can race to create a fresh server database's tables or
            # the study itself: the loser retries and then finds them made.
            import sqlalchemy.exc

            if attempt == 4 or not isinstance(e, sqlalchemy.exc.SQLAlchemyError):
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def has_heartbeat(cfg: Config) -> bool:
    """RDB storages (SQLite, PostgreSQL, MySQL) run Optuna's heartbeat; journal files have none."""
    return journal_path(storage_url(cfg)) is None


_REASON = "fail_reason/trial-{:d}"


def set_fail_reason(study: optuna.Study, number: int, reason: str) -> None:
    study.set_user_attr(_REASON.format(number), reason[:2000])


def fail_reason(study: optuna.Study, trial: optuna.trial.FrozenTrial, study_attrs: dict | None = None) -> str:
    """Why a trial failed: its own ``fail_reason`` (the objective raised) or the one recorded when
    another worker failed it (its worker died). ``study_attrs``: ``study.user_attrs``, read once."""
    attrs = study.user_attrs if study_attrs is None else study_attrs
    return trial.user_attrs.get("fail_reason") or attrs.get(_REASON.format(trial.number), "")


def _local_orphan(t: optuna.trial.FrozenTrial) -> bool:
    """A RUNNING trial whose worker ran on this host and is gone."""
    if t.user_attrs.get("worker_host") != socket.gethostname():
        return False
    pid = int(t.user_attrs.get("worker_pid", -1))
    return pid > 0 and pid != os.getpid() and not _pid_alive(pid)


def fail_dead_trials(cfg: Config, study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose worker died (public API only: ``study.tell`` and Optuna's
    ``fail_stale_trials``).

    RDB storages: Optuna's heartbeat (a trial whose worker stopped beating for the grace period is
    stale), which covers workers on every machine. Journal storages have no heartbeat: a trial is
    failed when its worker ran on this host and its process is gone.
    """
    if has_heartbeat(cfg):
        return list(optuna.storages.fail_stale_trials(study) or [])
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _local_orphan(t):
            set_fail_reason(study, t.number, f"worker {t.user_attrs['worker_host']}:"
                                             f"{t.user_attrs['worker_pid']} died mid-trial")
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except ValueError:  # another worker failed it first
                continue
            failed.append(t.number)
    return failed


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _judgeable(cfg: Config, running: list[optuna.trial.FrozenTrial]) -> bool:
    """Whether every RUNNING trial will end or be failed without this worker leaving (heartbeats, or
    trials of live workers on this host)."""
    if has_heartbeat(cfg):
        return True
    host = socket.gethostname()
    return all(t.user_attrs.get("worker_host") == host for t in running)


# ---- the objective --------------------------------------------------------------------------------
def trial_config(cfg: Config, space_overrides: dict[str, Any], number: int) -> Config:
    trial_cfg = apply(cfg, space_overrides)
    overrides = {"train": {"name": f"tune-{cfg.tune.study}/trial-{number:04d}", "resume": False}}
    if cfg.tune.max_epochs > 0:
        overrides["train"]["max_epochs"] = cfg.tune.max_epochs
    return with_overrides(trial_cfg, overrides)


def objective(trial: optuna.Trial, cfg: Config, space) -> float:
    from abaw.training.report import validation_curve
    from abaw.training.train import run_dir, train
    from abaw.tuning.pruning import OptunaPruning

    trial.set_user_attr("worker_host", socket.gethostname())
    trial.set_user_attr("worker_pid", os.getpid())
    trial_cfg = trial_config(cfg, space.suggest(trial), trial.number)
    out = run_dir(trial_cfg)
    trial.set_user_attr("run_dir", str(out))
    pruning = OptunaPruning(trial)
    try:
        metrics, artifacts = train(trial_cfg, callbacks=[pruning])
        if pruning.reported_epochs == 0:  # a finished run of the same identity was reused, untrained
            pruning.replay(validation_curve(out))
    except optuna.TrialPruned:  # raised when training ends: no post-training report for a pruned trial
        trial.set_user_attr("epochs", pruning.reported_epochs)
        raise
    except Exception as e:
        # Recorded on the trial so `--report` and optuna-dashboard show why it failed; the study goes on.
        trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:2000])
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        raise
    finally:
        gc.collect()
        _free_accelerator_memory()
    trial.set_user_attr("epochs", pruning.reported_epochs)  # validation epochs actually trained
    for key in ("p_va", "ccc_v", "ccc_a"):
        if key in metrics:
            trial.set_user_attr(f"val_{key}", float(metrics[key]))
    return float(metrics["p_va"])


def _free_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _worker(cfg_dict: dict, n_threads: int, quota: int) -> None:
    """One worker process: run up to ``quota`` trials of the shared study."""
    start_worker_process(n_threads)
    cfg = with_overrides(load_config(), cfg_dict)
    optimize(cfg, quota)


def remaining_trials(cfg: Config, study: optuna.Study) -> int:
    return max(0, cfg.tune.n_trials - finished_count(study))


def optimize(cfg: Config, quota: int | None = None) -> optuna.Study:
    """Run trials in this process until the study holds ``n_trials`` finished trials (or ``quota`` ran).

    Before each trial the worker counts the study's finished and running trials, on every machine: it
    starts one only while they are fewer than ``n_trials``, so workers started anywhere fill the study to
    its exact total. While the rest is running elsewhere it waits, so a trial whose worker dies is failed
    (heartbeat or pid check) and replaced rather than left missing.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(cfg.tune.space, cfg)
    study = open_study(cfg)
    deadline = time.monotonic() + cfg.tune.timeout if cfg.tune.timeout else None
    ran = 0
    while quota is None or ran < quota:
        if deadline is not None and time.monotonic() >= deadline:
            break
        fail_dead_trials(cfg, study)
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if finished >= cfg.tune.n_trials:
            break
        if finished + len(running) >= cfg.tune.n_trials:
            if not _judgeable(cfg, running):
                break
            time.sleep(max(0.5, min(5.0, cfg.tune.heartbeat_s / 2)))
            continue
        study.optimize(
            lambda t: objective(t, cfg, space),
            n_trials=1,
            timeout=None if deadline is None else max(0.0, deadline - time.monotonic()),
            catch=(Exception,),
            gc_after_trial=True,
        )
        ran += 1
    return study


def run_study(cfg: Config) -> optuna.Study:
    """Run (or continue) the study with ``cfg.tune.workers`` processes; export the best trial."""
    load_space(cfg.tune.space, cfg)  # fail on a bad space before starting any process
    study = open_study(cfg)  # create it once, so workers do not race to create it
    fail_dead_trials(cfg, study)
    remaining = remaining_trials(cfg, study)
    workers = min(cfg.tune.workers, remaining)
    if workers <= 1:
        optimize(cfg)
    else:
        ctx = mp.get_context("spawn")
        threads = thread_share(workers)
        quotas = [remaining // workers + (k < remaining % workers) for k in range(workers)]
        procs = [ctx.Process(target=_worker, args=(to_dict(cfg), threads, q)) for q in quotas]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        dead = [p.exitcode for p in procs if p.exitcode]
        if dead:  # its trial is failed by fail_dead_trials on the next start; the study itself is intact
            print(f"warning: {len(dead)} tuning worker(s) exited abnormally (exit codes {dead})")
    study = open_study(cfg)
    export_best(cfg, study)
    return study


# ---- export and report ----------------------------------------------------------------------------
def study_dir(cfg: Config) -> Path:
    """``cache/<release>/studies/<study>/``: the study's exported best config and its plots."""
    return cfg.release_cache / "studies" / cfg.tune.study


def export_path(cfg: Config) -> Path:
    """Next to the study in the release cache (never in the repository), or ``<export_dir>/<study>.yaml``."""
    if cfg.tune.export_dir:
        return Path(cfg.tune.export_dir).expanduser().resolve() / f"{cfg.tune.study}.yaml"
    return study_dir(cfg) / "best.yaml"


def shown_path(path: Path) -> str:
    """``path`` as a user types it here: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def best_config(cfg: Config, study: optuna.Study) -> Config | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    space = load_space(cfg.tune.space, cfg)
    best = study.best_trial
    values = dict(space.fixed)
    values.update(best.params)
    return apply(cfg, values)


def export_best(cfg: Config, study: optuna.Study) -> Path | None:
    """Write the best trial as a complete config that ``make train CONFIG=...`` takes as it is.

    Machine-specific locations (data root, cache root) and the trial's run name are left out, so the
    file works on another machine and trains under its own run name.
    """
    best = best_config(cfg, study)
    if best is None:
        return None
    data = to_dict(best)
    data.pop("cache_root", None)
    data["data"].pop("root", None)
    data["train"]["name"] = f"tuned-{cfg.tune.study}"
    data.pop("tune", None)
    path = export_path(cfg)
    header = (
        f"# Best trial of study {cfg.tune.study!r} (trial {study.best_trial.number}, "
        f"val P_VA {study.best_value:.4f}), exported by `abaw tune`.\n"
        f"# Train it with: make train CONFIG={shown_path(path)}\n"
    )
    atomic_write_text(path, header + config_yaml(data))
    return path


def report(cfg: Config, top: int = 10) -> str:
    import polars as pl

    study = open_study(cfg)
    trials = study.get_trials(deepcopy=False)
    study_attrs = study.user_attrs
    rows = []
    for t in trials:
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "p_va": t.value if t.value is not None else float("nan"),
                "epochs": t.user_attrs.get("epochs", len(t.intermediate_values)),
                "seconds": (t.duration.total_seconds() if t.duration else float("nan")),
                **{k: v for k, v in t.params.items()},
                "fail_reason": fail_reason(study, t, study_attrs),
            }
        )
    lines = [f"study {cfg.tune.study!r} at {storage_url(cfg)}: {len(trials)} trials "
             + ", ".join(f"{s.name.lower()} {sum(t.state == s for t in trials)}" for s in TrialState)]
    if rows:
        df = pl.DataFrame(rows, strict=False).sort("p_va", descending=True, nulls_last=True)
        with pl.Config(tbl_rows=top, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=40):
            lines.append(str(df.head(top)))
    plots = write_plots(cfg, study)
    if plots:
        lines.append("plots: " + ", ".join(str(p) for p in plots))
    return "\n".join(lines)


def write_plots(cfg: Config, study: optuna.Study) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out = study_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = {"history": ovm.plot_optimization_history, "parallel": ovm.plot_parallel_coordinate}
    if len(complete) >= 2 and len({tuple(sorted(t.params.items())) for t in complete}) >= 2:
        plots["importances"] = ovm.plot_param_importances
    written = []
    for name, fn in plots.items():
        if not complete:
            break
        try:
            ax = fn(study)
        except (ValueError, RuntimeError) as e:  # e.g. importances need variation in the parameters
            print(f"plot {name} skipped: {e}")
            continue
        fig = (ax[0] if hasattr(ax, "__len__") else ax).figure
        path = out / f"{name}.png"
        fig.set_size_inches(10, 6)
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def cli_tune(cfg: Config, args) -> int:
    overrides: dict[str, Any] = {}
    for flag, key in (("n_trials", "n_trials"), ("timeout", "timeout"), ("workers", "workers"),
                      ("storage", "storage"), ("study", "study")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if overrides:
        cfg = with_overrides(cfg, {"tune": overrides})
    if not getattr(args, "report", False):
        t0 = time.perf_counter()
        study = run_study(cfg)
        print(f"study {cfg.tune.study!r}: {finished_count(study)} finished trials "
              f"({time.perf_counter() - t0:.0f} s this run)")
        path = export_path(cfg)
        if path.exists():
            print(f"best config: {path}\n  train it: make train CONFIG={shown_path(path)}")
    print(report(cfg))
    return 0
