"""``abaw tune``: an Optuna study whose objective is the same ``train(cfg)`` as ``make train``.

Resumable (the storage holds the study; a rerun continues to ``n_trials`` finished trials), parallel
(several worker processes here, and any number of machines on a shared RDB storage), pruned (a
Lightning callback reports validation P_VA every epoch) and robust (a crashing trial is recorded as
FAIL with its reason, and a worker that died mid-trial has its trial failed on the next start).
"""

from __future__ import annotations

import gc
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
from abaw.utils import atomic_write_text, file_lock

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
REPO_ROOT = Path(__file__).resolve().parent.parent.parent


# ---- storage and study ----------------------------------------------------------------------------
def storage_url(cfg: Config) -> str:
    if cfg.tune.storage:
        return cfg.tune.storage
    path = cfg.release_cache / "studies" / f"{cfg.tune.study}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def make_storage(cfg: Config) -> optuna.storages.BaseStorage:
    url = storage_url(cfg)
    if url.startswith("journal:") or url.endswith(".log"):
        # A journal file works for several processes on one filesystem (NFS included) without a server.
        path = url.removeprefix("journal:").removeprefix("///")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    # Heartbeats let any worker (on any machine) fail the trials of a worker that died silently.
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=cfg.tune.heartbeat_s,
        grace_period=2 * cfg.tune.heartbeat_s,
    )


def make_sampler(cfg: Config, worker: int = 0) -> optuna.samplers.BaseSampler:
    # Each worker needs its own stream: workers with one seed would propose identical trials.
    seed = (cfg.tune.seed if cfg.tune.seed >= 0 else cfg.seed) + 1000 * worker
    if cfg.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, cfg.tune.n_trials))


def make_pruner(cfg: Config) -> optuna.pruners.BasePruner:
    t = cfg.tune
    if t.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=t.pruner_startup_trials, n_warmup_steps=t.pruner_warmup_epochs
        )
    if t.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, t.pruner_warmup_epochs))
    return optuna.pruners.NopPruner()


def open_study(cfg: Config, worker: int = 0) -> optuna.Study:
    url = storage_url(cfg)
    # Two processes creating a fresh SQLite schema at once collide ("table trials already exists"):
    # serialise the creation on this machine.
    lock = (url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else
            str(cfg.release_cache / "studies" / cfg.tune.study)) + ".lock"
    with file_lock(lock):
        return optuna.create_study(
            study_name=cfg.tune.study,
            storage=make_storage(cfg),
            sampler=make_sampler(cfg, worker),
            pruner=make_pruner(cfg),
            direction="maximize",
            load_if_exists=True,
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials whose worker on this host is gone as FAIL (works for every storage).

    RDB storages also fail stale trials by heartbeat, which covers workers on other machines.
    """
    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker_host") != host:
            continue
        pid = int(t.user_attrs.get("worker_pid", -1))
        if pid > 0 and pid != os.getpid() and not _pid_alive(pid):
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", f"worker {host}:{pid} died mid-trial")
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            failed.append(t.number)
    if isinstance(study._storage, optuna.storages.RDBStorage):
        failed += [n for n in optuna.storages.fail_stale_trials(study) or [] if n not in failed]
    return failed


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


# ---- the objective --------------------------------------------------------------------------------
def trial_config(cfg: Config, space_overrides: dict[str, Any], number: int) -> Config:
    trial_cfg = apply(cfg, space_overrides)
    overrides = {"train": {"name": f"tune-{cfg.tune.study}/trial-{number:04d}", "resume": False}}
    if cfg.tune.max_epochs > 0:
        overrides["train"]["max_epochs"] = cfg.tune.max_epochs
    return with_overrides(trial_cfg, overrides)


def objective(trial: optuna.Trial, cfg: Config, space) -> float:
    from abaw.training.train import run_dir, train
    from abaw.tuning.pruning import OptunaPruning

    trial.set_user_attr("worker_host", socket.gethostname())
    trial.set_user_attr("worker_pid", os.getpid())
    trial_cfg = trial_config(cfg, space.suggest(trial), trial.number)
    pruning = OptunaPruning(trial)
    try:
        metrics, artifacts = train(trial_cfg, callbacks=[pruning])
    except optuna.TrialPruned:
        raise
    except Exception as e:
        # Recorded on the trial so `--report` and optuna-dashboard show why it failed; the study goes on.
        trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:2000])
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        raise
    finally:
        gc.collect()
        _free_accelerator_memory()
    trial.set_user_attr("run_dir", str(run_dir(trial_cfg)))
    trial.set_user_attr("epochs", pruning.reported_epochs)  # validation epochs actually trained
    for key in ("p_va", "ccc_v", "ccc_a"):
        if key in metrics:
            trial.set_user_attr(f"val_{key}", float(metrics[key]))
    if pruning.pruned:
        raise optuna.TrialPruned(f"pruned after {pruning.reported_epochs} epochs")
    return float(metrics["p_va"])


def _free_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _worker(cfg_dict: dict, n_threads: int, quota: int, worker: int) -> None:
    """One worker process: run ``quota`` trials of the shared study."""
    import threading

    import torch

    parent = os.getppid()

    def exit_with_parent() -> None:
        # A killed `abaw tune` must not leave workers training on: their trials are failed on restart.
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    torch.set_num_threads(max(1, n_threads))
    cfg = with_overrides(load_config(), cfg_dict)
    optimize(cfg, quota, worker)


def remaining_trials(cfg: Config, study: optuna.Study) -> int:
    return max(0, cfg.tune.n_trials - finished_count(study))


def optimize(cfg: Config, quota: int | None = None, worker: int = 0) -> optuna.Study:
    """Run up to ``quota`` trials (default: what the study lacks of ``n_trials``) in this process."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(cfg.tune.space, cfg)
    study = open_study(cfg, worker)
    if quota is None:
        fail_dead_trials(study)
        quota = remaining_trials(cfg, study)
    if quota <= 0:
        return study
    # Quotas make the total exact for the workers started here; the callback also stops this worker
    # once the study is full, when other machines work on the same storage.
    stop = optuna.study.MaxTrialsCallback(cfg.tune.n_trials, states=FINISHED)
    study.optimize(
        lambda t: objective(t, cfg, space),
        n_trials=quota,
        timeout=cfg.tune.timeout or None,
        catch=(Exception,),
        callbacks=[stop],
        gc_after_trial=True,
    )
    return study


def run_study(cfg: Config) -> optuna.Study:
    """Run (or continue) the study with ``cfg.tune.workers`` processes; export the best trial."""
    load_space(cfg.tune.space, cfg)  # fail on a bad space before starting any process
    study = open_study(cfg)  # create it once, so workers do not race to create it
    fail_dead_trials(study)
    remaining = remaining_trials(cfg, study)
    workers = min(cfg.tune.workers, remaining)
    if workers <= 1:
        optimize(cfg, remaining)
    else:
        ctx = mp.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // workers)
        quotas = [remaining // workers + (k < remaining % workers) for k in range(workers)]
        procs = [ctx.Process(target=_worker, args=(to_dict(cfg), threads, q, k)) for k, q in enumerate(quotas)]
        for p in procs:
            p.start()
            time.sleep(0.5)  # stagger the first sampler calls
        for p in procs:
            p.join()
        dead = [p.exitcode for p in procs if p.exitcode]
        if dead:  # its trial is failed by fail_dead_trials on the next start; the study itself is intact
            print(f"warning: {len(dead)} tuning worker(s) exited abnormally (exit codes {dead})")
    study = open_study(cfg)
    export_best(cfg, study)
    return study


# ---- export and report ----------------------------------------------------------------------------
def export_path(cfg: Config) -> Path:
    d = Path(cfg.tune.export_dir)
    if not d.is_absolute():
        d = REPO_ROOT / d
    return d / f"{cfg.tune.study}.yaml"


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
    shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    header = (
        f"# Best trial of study {cfg.tune.study!r} (trial {study.best_trial.number}, "
        f"val P_VA {study.best_value:.4f}), exported by `abaw tune`.\n"
        f"# Train it with: make train CONFIG={shown}\n"
    )
    atomic_write_text(path, header + config_yaml(data))
    return path


def report(cfg: Config, top: int = 10) -> str:
    import polars as pl

    study = open_study(cfg)
    trials = study.get_trials(deepcopy=False)
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
                "fail_reason": t.user_attrs.get("fail_reason", ""),
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

    out = cfg.release_cache / "studies" / cfg.tune.study
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
            print(f"best config exported to {path}")
    print(report(cfg))
    return 0
