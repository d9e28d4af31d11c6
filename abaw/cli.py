"""``abaw <stage>``: a thin command line over plain functions.

Every stage takes ``--config FILE`` (YAML under configs/) and ``key.sub=value`` overrides anywhere on
the line (``abaw tune --study s train.max_epochs=3``); stage modules are imported only when their command
runs, so ``abaw validate`` does not load torch. A user error (``abaw.errors.AbawError``) is printed as one
line, ``abaw <stage>: <message>``, with exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from abaw.errors import AbawError

# command -> (module, function, help). The function takes (cfg, args) and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": ("abaw.synth.generate", "cli_synth", "write a synthetic release in the Aff-Wild2 layout"),
    "data": ("abaw.data.index", "cli_data", "index a release and print its summary and traps"),
    "finetune": ("abaw.finetune.run", "cli_finetune", "fine-tune the visual backbone on training face crops"),
    "features": ("abaw.features.extract", "cli_features", "extract cached visual and audio features"),
    "train": ("abaw.training.train", "cli_train", "train a fusion model on cached features"),
    "tune": ("abaw.tuning.study", "cli_tune", "run or report an Optuna study"),
    "ablate": ("abaw.ablation.run", "cli_ablate", "fusion variants x seeds x complementarity levels, one table"),
    "predict": ("abaw.submit.predict", "cli_predict", "predict a split with one or more runs"),
    "submit": ("abaw.submit.submission", "cli_submit", "write, validate and package a submission"),
    "validate": ("abaw.submit.validate", "cli_validate", "check a prediction file independently"),
    "score": ("abaw.submit.score", "cli_score", "score a prediction file against ground truth"),
    "video": ("abaw.video.pipeline", "cli_video", "predict valence and arousal for any video with trained runs"),
}


# A config override: a dotted key of identifiers, "=", any value. Paths and URLs never look like this
# (their text before the first "=" holds "/", ":" or "-"), so such words can sit anywhere on the line.
_OVERRIDE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*=")


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(arguments, overrides)``: every ``key.sub=value`` word is an override, wherever it stands.

    argparse alone cannot take positionals after options in every order (a ``*`` positional is matched
    once, before the options), and ``--runs A B key=value`` would swallow the override as a run.
    Everything after a bare ``--`` is left to argparse.
    """
    args: list[str] = []
    overrides: list[str] = []
    for i, word in enumerate(argv):
        if word == "--":
            args += argv[i:]
            break
        (overrides if _is_override(word) else args).append(word)
    return args, overrides


def _is_override(word: str) -> bool:
    """``key.sub=value`` whose first key is a config section or field; anything else with an ``=`` (an
    ablation variant ``paper=grjca_hier,model.gate_tau=0.1``) is an argument."""
    import dataclasses

    from abaw.config import Config

    return bool(_OVERRIDE.match(word)) and word.split("=", 1)[0].split(".", 1)[0] in {
        f.name for f in dataclasses.fields(Config)}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default=None, help="YAML config (path or name under configs/)")
    p.add_argument("--data", default=None, help="release root (default: the generated demo release)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-4")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abaw", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ps = {name: sub.add_parser(name, help=h, description=h) for name, (_, _, h) in COMMANDS.items()}
    # FILE comes before the common trailing key=value overrides: `abaw video FILE [key=value...]`.
    ps["video"].add_argument("file", help="the video (any container PyAV reads)")
    for p in ps.values():
        _add_common(p)

    ps["synth"].add_argument("--out", default=None, help="output folder (default: the demo release path)")
    ps["synth"].add_argument("--seed", type=int, default=None)
    ps["synth"].add_argument("--scale", type=float, default=None, help="size multiplier (default 1)")
    ps["synth"].add_argument("--force", action="store_true", help="overwrite an existing release")

    ps["data"].add_argument("--rebuild", action="store_true", help="rebuild the index even if it is up to date")

    ps["finetune"].add_argument("--score", choices=["val", "test"], default=None,
                                help="score the finished fine-tuning's own head on a split's frames (test: "
                                     "against ground truth, where the release has it), train nothing")
    ps["finetune"].add_argument("--stride", type=int, default=None,
                                help="with --score: every N-th annotated frame with a crop (default val_stride)")
    ps["features"].add_argument("--shard", default=None, help="I/N: extract this machine's share")
    ps["features"].add_argument("--only", choices=["visual", "audio"], default=None)

    for name in ("tune",):
        ps[name].add_argument("--n-trials", type=int, default=None)
        ps[name].add_argument("--timeout", type=float, default=None, help="seconds")
        ps[name].add_argument("--workers", type=int, default=None, help="worker processes on this machine")
        ps[name].add_argument("--storage", default=None, help="Optuna storage URL")
        ps[name].add_argument("--study", default=None)
        ps[name].add_argument("--report", action="store_true", help="print best trials and write plots")

    pa = ps["ablate"]
    pa.add_argument("--variants", nargs="+", default=None,
                    help="variants, or label=variant,key=value,... (default: concat rjca grjca grjca_hier xformer)")
    pa.add_argument("--seeds", default=None, help="a count (5: seeds 0-4, the default) or a list (0,3,7)")
    pa.add_argument("--levels", nargs="+", default=None,
                    help="clean moderate strong (default), or 'release' for the configured release as it is")
    pa.add_argument("--reference", default="rjca", help="variant the paired comparison is against")
    pa.add_argument("--name", default=None, help="output folder name under <cache>/ablation/")
    pa.add_argument("--out", default=None, help="output folder (overrides --name)")
    pa.add_argument("--cached-only", action="store_true", help="tabulate the finished cells only, train nothing")
    pa.add_argument("--workers", type=int, default=1, help="cells trained at once, in processes sharing the cores")

    for name in ("predict", "submit"):
        ps[name].add_argument("--runs", nargs="+", default=None, help="run folders to ensemble")
    ps["predict"].add_argument("--split", default=None, choices=["train", "val", "test"])
    ps["submit"].add_argument("--name", default=None)

    ps["validate"].add_argument("submission")
    ps["validate"].add_argument("--sample", default=None, help="the organisers' sample prediction file")
    ps["validate"].add_argument("--release", default=None, help="the test set release list")

    pv = ps["video"]
    pv.add_argument("--runs", nargs="+", required=True, help="run folders or names to ensemble")
    pv.add_argument("--out", default=None, help="output folder (default: ./<video stem>_abaw)")
    pv.add_argument("--face", default=None, help="which face: N from the left (0 = leftmost), left, right")
    pv.add_argument("--every", type=int, default=1, help="detect on every k-th frame, track in between")
    pv.add_argument("--detector", default="auto", choices=["auto", "short", "full"])
    pv.add_argument("--landmarks", default="mesh", choices=["mesh", "detector"],
                    help="alignment points: the face mesh on the detected box (default) or the detector's own")
    pv.add_argument("--template", default="release", choices=["release", "standard"],
                    help="crop layout: that of the crops the run trained on (default) or the standard one")
    pv.add_argument("--device", default=None, help="features and prediction device (default: the runs')")
    pv.add_argument("--crops", action="store_true", help="also write the aligned crops")
    pv.add_argument("--overlay", action="store_true", help="write overlay.mp4 (face box, VA dot, audio)")
    pv.add_argument("--no-progress", action="store_true")

    ps["score"].add_argument("submission")
    ps["score"].add_argument("--truth", default=None, help="folder of ground-truth annotation files")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line; ``args.overrides`` holds every ``key=value`` word in the order given."""
    words, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(words)
    args.overrides = list(args.overrides) + overrides
    return args


def one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from abaw.config import load_config

    overrides = list(args.overrides)
    if args.data:
        overrides.insert(0, f"data.root={args.data}")
    try:
        cfg = load_config(args.config, overrides)
        module, func, _ = COMMANDS[args.command]
        return int(getattr(importlib.import_module(module), func)(cfg, args) or 0)
    except AbawError as e:
        print(f"abaw {args.command}: {one_line(str(e)) or type(e).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
