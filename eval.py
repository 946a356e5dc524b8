"""eval.py: evaluates train.py's checkpoints, as a daemon or ad hoc.

As a daemon it watches a train_dir, evaluates every new checkpoint once, in step order, and writes the
validation curves to the `eval` TensorBoard run beside train.py's `train` run. Several daemons may
share a train_dir (other machines, `docker compose up --scale eval=N`): each checkpoint is evaluated by
one of them, and one records them all (shared/evaluation/coordination.py):

    python eval.py --train-dir runs/digits [--device cpu|cuda:N] [--poll SECS]

With --suite NAME it runs one of the config's other evaluation suites (`suites:`) into eval-NAME/, on that
suite's data and schedule; a suite started late evaluates the retained checkpoints it selects, in step order:

    python eval.py --train-dir runs/digits --suite NAME [--set suites.NAME.every_steps=500]

Ad hoc it evaluates one checkpoint and prints the metrics (`--json` for one JSON object):

    python eval.py --train-dir runs/digits --checkpoint latest|best|STEP|PATH

With --status it prints, per evaluation suite, the steps evaluated ok, failed, skipped and pending, the lag
behind training and the best so far, reading only (`--json` for one JSON object):

    python eval.py --train-dir runs/digits --status

Another trainer's run (Hugging Face, Lightning, DCP, files) is evaluated the same ways, with an eval.yaml that
holds the task, its eval section and a `source:` (docs/foreign-runs.md):

    python eval.py --train-dir hf-output --config eval.yaml [--results-dir DIR] [--checkpoint ...]

With --summarize it prints the mean and standard deviation of each metric over train_dirs (folds):

    python eval.py --summarize runs/exp        # launch.py --folds' folder, or runs/exp/fold-*
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

# Read once, when torch loads OpenMP: its threads then sleep while they wait, instead of spinning on a core
# that another process needs (shared/runtime/threads.py says what spinning cost beside an evaluator).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from shared import config as cfg
from shared.checkpoints.sources import TRAINVAL, CheckpointSource, SourceSection, resolve_source
from shared.checkpoints.store import Checkpoint
from shared.checkpoints.suites import find_suite, record_suite
from shared.errors import CheckpointError, UsageError
from shared.evaluation import actions, crossval, export, status
from shared.evaluation.actions.export_best import ExportBest
from shared.evaluation.actions.log_metrics import log_metrics
from shared.evaluation.actions.write_outcome import WriteOutcome
from shared.evaluation.coordination import Coordinator, join_as_evaluator
from shared.evaluation.evaluator import Evaluator
from shared.evaluation.watch import CheckpointWatcher
from shared.loggers import dashboards
from shared.loggers.backends import check_backends, mark_run, open_run
from shared.loggers.base import Logger
from shared.loggers.mlflow_backend import tracking_uri
from shared.protocol import numbers
from shared.protocol.claims import this_evaluator
from shared.protocol.files import create_once, make_folder, refuse_linked_folders
from shared.protocol.finished import MAX_WALL_TIME, read_finished
from shared.protocol.layout import DEFAULT_SUITE, METADATA, TrainDir
from shared.protocol.presence import FolderGuard
from shared.protocol.results import EvalResult, SplitResult
from shared.runtime import cli, devices, threads
from shared.runtime.signals import StopRequest
from shared.tasks.loading import load_config, resolve_config, suite_config

log = logging.getLogger("eval")
seconds = cli.number(float, 0, cfg.MAX_SECS)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="eval.py", description=__doc__.split("\n\n")[0])
    cli.add_common_options(parser, train_dir_required=False, set_example="eval.batch_size=256")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument(
        "--poll", type=seconds, metavar="SECS", help="poll every SECS, not inotify (NFS, Docker Desktop); 0: inotify"
    )
    parser.add_argument(
        "--suite",
        default=DEFAULT_SUITE,
        metavar="NAME",
        help=f"run this evaluation suite of the config's suites: (default: {DEFAULT_SUITE}, the eval section)",
    )
    parser.add_argument("--idle-timeout", type=seconds, metavar="SECS", help="exit 0 after SECS with no new checkpoint")
    parser.add_argument(
        "--after-finished",
        type=cli.number(float, 0, MAX_WALL_TIME),
        metavar="WALL_TIME",
        help="the finished.json with this wall_time is an earlier run's (train.py is starting to train on): "
        "exit only after a later one (launch.py passes it)",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="PATH|STEP|latest|best",
        help="evaluate this one checkpoint (STEP: that step's in checkpoints/; best: the best/ export), exit",
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="print each suite's ok, failed, skipped and pending steps, its lag and best so far (reads only), exit",
    )
    parser.add_argument(
        "--results-dir",
        metavar="DIR",
        help="another trainer's run (a source: in --config): write the results here, not into --train-dir "
        "(read-only, say)",
    )
    parser.add_argument(
        "--json", action="store_true", help="ad hoc, --status, --summarize: print one JSON object instead of a table"
    )
    parser.add_argument("--write-summary", action="store_true", help="ad hoc: also write to the eval_adhoc run")
    parser.add_argument(
        "--summarize", nargs="+", type=Path, metavar="DIR", help="mean and std of each metric over these train_dirs"
    )
    args = parser.parse_args(argv)
    if not args.train_dir and not args.summarize:
        parser.error("the following arguments are required: --train-dir (or --summarize DIR ...)")
    if args.summarize and (args.train_dir or args.checkpoint or args.status):
        parser.error("--summarize reads its own train_dirs; leave out --train-dir, --checkpoint and --status")
    if args.status and args.checkpoint:
        parser.error("--status reads what was evaluated; leave out --checkpoint")
    if not (args.checkpoint or args.summarize or args.status) and args.json:
        parser.error("--json goes with --checkpoint, --status or --summarize")
    if not args.checkpoint and args.write_summary:
        parser.error("--write-summary goes with --checkpoint")
    if args.suite != DEFAULT_SUITE and (args.summarize or args.write_summary):
        parser.error("--suite goes with the daemon or --checkpoint (without --write-summary); leave out the others")
    return args


@dataclasses.dataclass(frozen=True)
class Foreign:
    """Another trainer's run: the eval.yaml's config (task, eval) and `source:`, and the format's reader."""

    config: cfg.Config
    section: SourceSection
    source: CheckpointSource


def read_foreign(args: argparse.Namespace) -> Foreign | None:
    """The eval.yaml of another trainer's run (its `source:` says so); None for train.py's own runs."""
    raw = cfg.read_with_overrides(args.config, args.overrides) if args.config else None
    if not (isinstance(raw, dict) and "source" in raw):
        if args.results_dir:
            raise UsageError("--results-dir goes with another trainer's run: a source: section in --config")
        return None
    section = resolve_source(raw.pop("source"))
    return Foreign(resolve_config(raw), section, section.build())


def foreign_train_dir(args: argparse.Namespace, foreign: Foreign) -> TrainDir:
    """Results under --results-dir, else beside the checkpoints, in today's layout (eval/, best/)."""
    source_root = Path(args.train_dir)
    root = Path(args.results_dir) if args.results_dir else source_root
    return TrainDir(root, source_root=source_root, source_checkpoints=foreign.source.folder(source_root))


def eval_runs(train_dir: TrainDir, splits: list[str], foreign: Foreign | None) -> dict[str, Path]:
    """Each split's TensorBoard run: in the train_dir, or beside the trainer's own runs (source.logdir,
    relative to where the results go) so one `tensorboard --logdir` shows both."""
    runs = {split: train_dir.split_run(split) for split in splits}
    if foreign is None or foreign.section.logdir is None:
        return runs
    logdir = train_dir.root / Path(foreign.section.logdir).expanduser()
    return {split: logdir / run.name for split, run in runs.items()}


def use_trainers_mlflow_run(train_dir: TrainDir, foreign: Foreign | None, config: cfg.Config) -> None:
    """source.mlflow_run_id: the evaluation logs into the trainer's MLflow run (mlflow_run.json names it)."""
    if foreign is None or foreign.section.mlflow_run_id is None or "mlflow" not in config.log.backends:
        return
    record = {"run_id": foreign.section.mlflow_run_id, "tracking_uri": tracking_uri(config.log)}
    create_once(train_dir.mlflow_run, (numbers.dumps(record) + "\n").encode())


def read_config(args: argparse.Namespace, train_dir: TrainDir) -> cfg.Config:
    """The train_dir's config.yaml, whose model eval.py rebuilds; --config/--set may change eval.* only."""
    if not train_dir.config.exists():
        raise UsageError(
            f"{train_dir.root} is not a train_dir (no config.yaml); point --train-dir at the folder train.py was "
            "given as its --train-dir (train.py writes config.yaml there when it starts)"
        )
    saved = load_config(train_dir.config, follow_links=False)
    config = load_config(args.config or train_dir.config, args.overrides, follow_links=bool(args.config))
    cfg.check_eval_only(saved, config, "--config/--set")
    return config


def write_summaries(logger: Logger, step: int, result: SplitResult) -> None:
    """One split's evaluation at `step`: every scalar by its metric's name, then the artifacts."""
    for tag, value in result.metrics.items():
        logger.scalar(tag, value, step)
    for name, artifact in result.artifacts.items():
        dashboards.write_artifact(logger, name, artifact, step)
    logger.flush()


def evaluate_checkpoint(checkpoint: Checkpoint, evaluator: Evaluator, train_dir: TrainDir) -> EvalResult:
    """Evaluate one checkpoint on every split into the result the recorder turns into TensorBoard points
    and a ledger line; the evaluator keeps its weights for the actions after it (export to best/)."""
    started, wall_time = time.perf_counter(), time.time()
    file = str(checkpoint.path.relative_to(train_dir.reads_within))
    try:
        step = evaluator.load_checkpoint(checkpoint.path, within=train_dir.reads_within)
        if step != checkpoint.step:
            raise CheckpointError(f"its name says step {checkpoint.step} but it holds step {step}")
    except FileNotFoundError:
        return skipped(checkpoint, train_dir, "deleted before it could be evaluated")
    except CheckpointError as err:
        log.error("%s: failed, %s", file, err)
        result = EvalResult(checkpoint.step, file, "failed", reason=str(err))
    else:
        result = evaluate_loaded(evaluator, step, file)
    seconds = round(time.perf_counter() - started, 4)
    return dataclasses.replace(result, wall_time=wall_time, seconds=seconds, evaluator=this_evaluator())


def evaluate_loaded(evaluator: Evaluator, step: int, file: str) -> EvalResult:
    """The loaded checkpoint's result; a `failed` one when the task's own code (model, loss, metrics)
    raises, so that checkpoint fails and the daemon goes on with the next."""
    try:
        return evaluator.evaluate(step, file)
    except Exception as err:
        log.error("step %d: the task failed while evaluating it: %s", step, exception_line(err))
        log.debug("step %d: the task's traceback", step, exc_info=True)
        return EvalResult(step, file, "failed", reason=f"the task raised {exception_line(err)}")


def exception_line(err: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    message = str(err).strip().splitlines()
    return f"{type(err).__name__}: {message[0]}" if message else type(err).__name__


def skipped(checkpoint: Checkpoint, train_dir: TrainDir, reason: str) -> EvalResult:
    """A checkpoint deliberately not evaluated, recorded so it is accounted for rather than silently missing."""
    relative = str(checkpoint.path.relative_to(train_dir.reads_within))
    log.warning("%s: skipped, %s", relative, reason)
    return EvalResult(checkpoint.step, relative, "skipped", time.time(), reason=reason, evaluator=this_evaluator())


# How often a daemon waiting for train.py says so again, so a mistyped --train-dir is not a silent wait.
WAIT_HINT_SECS = 30.0


def wait_for(
    condition: Callable[[], bool],
    wait: Callable[[float], object],
    stop: StopRequest,
    deadline: float,
    hint: Callable[[], str],
) -> bool:
    """Wait (`wait(secs)`: on watcher events or a stop) until condition() holds, re-checking at least every
    second and logging `hint()` at once and every WAIT_HINT_SECS; False on stop or at `deadline`."""
    next_hint = time.monotonic()
    while not condition():
        now = time.monotonic()
        if stop or now >= deadline:
            return False
        if now >= next_hint:
            log.info("%s", hint())
            next_hint = now + WAIT_HINT_SECS
        wait(min(1.0, deadline - now, next_hint - now))
    return True


def waiting_for_train_dir(train_dir: TrainDir, existed: bool, started: float) -> str:
    """What the daemon waits for, how long it has, and whether the folder was there to begin with."""
    folder = train_dir.reads_within.resolve()
    waited = f"waited {time.monotonic() - started:.0f}s"
    if train_dir.foreign:
        there = "exists" if folder.is_dir() else "does not exist yet"
        checkpoints = train_dir.checkpoints.resolve()
        return f"waiting for the first complete checkpoint in {checkpoints} ({waited}; {folder} {there})"
    if not folder.is_dir():
        return (
            f"waiting for train.py to create {folder} ({waited}; it did not exist when eval.py started: "
            "if train.py is already running, check --train-dir for a typo)"
        )
    before = "existed" if existed else "did not exist"
    return f"waiting for train.py to write {folder / train_dir.config.name} ({waited}; the folder {before} at start)"


def run_daemon(args: argparse.Namespace, train_dir: TrainDir, device: torch.device, foreign: Foreign | None) -> int:
    """Several daemons may share a train_dir: each evaluates the checkpoints it claims, one records them all."""
    started, existed, woken = time.monotonic(), train_dir.reads_within.is_dir(), threading.Event()
    deadline = started + (math.inf if args.idle_timeout is None else args.idle_timeout)
    hint = functools.partial(waiting_for_train_dir, train_dir, existed, started)
    stop = StopRequest(on_stop=woken.set)
    source = foreign.source if foreign else TRAINVAL
    # The daemon may start before train.py, but writes nothing until the folder is a train_dir (config.yaml
    # there): a mistyped --train-dir stays absent, and a folder that is not a train_dir stays as it was. Another
    # trainer's run writes no config.yaml: its folder and its first complete checkpoint are the signal.
    if not wait_for(train_dir.reads_within.is_dir, woken.wait, stop, deadline, hint):
        return 0
    refuse_linked_folders(train_dir.checkpoints)  # eval/ and the split runs are checked as they are made
    if foreign and args.results_dir:
        make_folder(train_dir.root)
    # The suite's pending/ wakes its recorder: known by the name alone, before the config says the suite exists.
    with CheckpointWatcher(train_dir.for_suite(args.suite), args.poll, source) as watcher:
        stop.on_stop = watcher.wake
        joined = (lambda: bool(source.list(train_dir.checkpoints))) if foreign else train_dir.config.exists
        if not wait_for(joined, watcher.wait, stop, deadline, hint):
            return 0
        if args.suite == DEFAULT_SUITE:  # at once; a named suite's folder is made once the config names it
            join_as_evaluator(train_dir)  # within a second of config.yaml, before retention may retire anything
        took_threads = threads.apply(threads.choose("eval", args.threads, train_dir))  # train.py, if any, has its lock
        given = foreign.config if foreign else read_config(args, train_dir)
        suite = find_suite(train_dir, given, args.suite)
        join_as_evaluator(suite.places)
        record_suite(suite)  # a named suite's schedule, for train.py's retention
        config = suite_config(given, suite.name)
        use_trainers_mlflow_run(train_dir, foreign, config)
        check_backends(config)
        evaluator = Evaluator.from_config(config, device, source)
        log.info(took_threads)
        places = suite.places  # this suite's eval run, ledger, claims and pending outcomes
        runs = eval_runs(places, list(evaluator.splits), foreign)  # one writer per split's run
        prepare = functools.partial(dashboards.prepare, evaluator.task.build_metrics)
        after = after_evaluation(places, evaluator, config)
        arrivals = watcher.arrivals
        with Coordinator(places, config, write_summaries, runs, prepare, suite.schedule, source, arrivals) as shared:
            return follow_checkpoints(args, shared, evaluator, after, config, watcher, stop)


def after_evaluation(train_dir: TrainDir, evaluator: Evaluator, config: cfg.Config) -> list[actions.Action]:
    """What happens to each result (evaluated, failed or skipped), in this order (shared/evaluation/actions);
    `train_dir` is the suite's view: a named suite exports best-NAME/ only when asked (suites.NAME.export_best)."""
    exports = not train_dir.named_suite or config.suites.by_name[train_dir.suite].export_best
    best = ExportBest(train_dir, evaluator.task, evaluator.model, config)
    return [
        actions.When(actions.scored, log_metrics),
        *([actions.When(actions.scored, best)] if exports else []),
        WriteOutcome(train_dir.pending),  # last: once it is recorded, retention may delete the checkpoint
    ]


def follow_checkpoints(
    args: argparse.Namespace,
    shared: Coordinator,
    evaluator: Evaluator,
    after: list[actions.Action],
    config: cfg.Config,
    watcher: CheckpointWatcher,
    stop: StopRequest,
) -> int:
    train_dir, done = shared.train_dir, shared.scan.ledger.steps
    log.info(
        "evaluating %s on %s as %s; %d step(s) already recorded",
        f"{train_dir.root} (suite {train_dir.suite})" if train_dir.named_suite else train_dir.root,
        evaluator.device,
        this_evaluator(),
        len(done),
    )
    idle_since, worked = time.monotonic(), False
    folders = FolderGuard("eval.py", train_dir.root, train_dir.eval_run, train_dir.checkpoints)
    while not stop:
        folders.check()
        finished = read_finished(train_dir)  # read before the scan: its checkpoints are then listed
        if finished is not None and finished.wall_time == args.after_finished:
            finished = None  # an earlier run's marker, which train.py removes as it starts
        recorded = shared.record_ready()
        skip, checkpoint = shared.claim_next()
        for each, why in skip:
            actions.run(after, skipped(each, train_dir, why))
        if checkpoint is not None:
            with shared.claims.kept_fresh(checkpoint.step):
                actions.run(after, evaluate_checkpoint(checkpoint, evaluator, train_dir))
        if recorded or skip or checkpoint:
            idle_since, worked = time.monotonic(), True
            continue
        if finished is not None and shared.all_recorded() and shared.has_recorded(finished.step):
            # One that did nothing may have started next to a train.py that trains on before it removed the marker.
            again = "" if worked else "; nothing was left to do: if train.py is to train on, start eval.py once it has"
            done = "training finished and every checkpoint is evaluated"
            log.info("finished.json names step %s: %s%s", finished.step, done, again)
            if not train_dir.named_suite:  # the default suite's last point is in: MLflow's run ends here
                mark_run(config, train_dir, "FINISHED")
            return 0
        idle = time.monotonic() - idle_since
        if args.idle_timeout is not None and idle >= args.idle_timeout:
            log.info("no new checkpoint for %.0fs (--idle-timeout); exiting", idle)
            return 0
        remaining_idle = math.inf if args.idle_timeout is None else args.idle_timeout - idle
        watcher.wait(min(shared.rescan_secs, remaining_idle))
    shared.record_ready()  # as the recorder: what was evaluated before the stop
    log.info("stopped")
    return 0


def resolve_checkpoint(choice: str, train_dir: TrainDir, source: CheckpointSource = TRAINVAL) -> Path:
    """--checkpoint's checkpoint: latest, a step number (its checkpoint in checkpoints/), or a path."""
    found = source.list(train_dir.checkpoints)
    if choice == "latest":
        if not found:
            raise UsageError(f"--checkpoint latest: {train_dir.checkpoints} holds no checkpoint yet")
        return found[-1].path
    if choice.isdigit():
        at_step = [checkpoint.path for checkpoint in found if checkpoint.step == int(choice)]
        if not at_step:
            steps = [str(checkpoint.step) for checkpoint in found]
            if len(steps) > 10:  # keep_every_n_steps may keep many: the first and the newest say enough
                steps = [*steps[:3], "...", *steps[-5:], f"({len(found)} in all)"]
            raise UsageError(
                f"--checkpoint {choice}: {train_dir.checkpoints} holds no checkpoint of step {int(choice)}; "
                f"its steps: {', '.join(steps) or 'none yet'}; give one of them, latest, best or a PATH"
            )
        return at_step[0]
    path = Path(choice)
    if train_dir.foreign:
        if source.step_of(path) is None:
            raise UsageError(
                f"--checkpoint {choice}: not a complete checkpoint of this source.format; give one, a step "
                "number, latest or best"
            )
    elif not (path.is_file() or (path / METADATA).is_file()):
        raise UsageError(
            f"--checkpoint {choice}: no such file; give a checkpoint (file or sharded folder), a step number, "
            "latest or best"
        )
    if not path.resolve().is_relative_to(train_dir.reads_within.resolve()):
        raise UsageError(
            f"--checkpoint {choice} is outside --train-dir {train_dir.reads_within}; copy it into "
            f"{train_dir.checkpoints} (under a temporary name, then rename) to evaluate it there"
        )
    return path


def run_adhoc(args: argparse.Namespace, train_dir: TrainDir, device: torch.device, foreign: Foreign | None) -> int:
    took_threads = threads.apply(threads.choose("eval", args.threads, train_dir))
    given = foreign.config if foreign else read_config(args, train_dir)
    source = foreign.source if foreign else TRAINVAL
    train_dir = find_suite(train_dir, given, args.suite).places  # --checkpoint best: the suite's best-NAME/
    config = suite_config(given, args.suite)
    if args.write_summary:
        check_backends(config)
    best = args.checkpoint == "best"
    if best:
        export.best_folder(train_dir)  # refuses a train_dir with none yet
    path = train_dir.best if best else resolve_checkpoint(args.checkpoint, train_dir, source)
    shown = f"{path}/" if best else str(path)  # best/ by its own name, not the hidden folder it points at now
    evaluator = Evaluator.from_config(config, device, source)
    log.info(took_threads)
    try:
        step = export.restore_best(evaluator.model, train_dir)["step"] if best else evaluator.load_checkpoint(path)
    except CheckpointError as err:
        print(f"eval.py: error: {path}: {err}", file=sys.stderr)
        return 1
    result = evaluator.evaluate(step, shown)
    if args.json:
        record = result.to_record()
        print(numbers.dumps({key: record[key] for key in ("step", "file", "metrics", "per_class_f1", "split_metrics")}))
    else:
        print(f"{shown} (step {step})")
        print(f"  {'':<16} " + " ".join(f"{split:>8}" for split in result.splits))
        for name in result.metrics:
            print(f"  {name:<16} " + " ".join(f"{r.metrics[name]:>8.4f}" for r in result.splits.values()))
    if args.write_summary:
        for split, scores in result.splits.items():
            with open_run(config, train_dir, train_dir.split_run(split, adhoc=True), purge_step=None) as logger:
                write_summaries(logger, step, scores)
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.summarize:
        crossval.print_summary(args.summarize, args.json)
        return 0
    foreign = read_foreign(args)
    train_dir = foreign_train_dir(args, foreign) if foreign else TrainDir(Path(args.train_dir))
    device = devices.resolve(args.device)
    devices.use_fast_math(device, autotune=False)
    if (args.checkpoint or args.status) and not train_dir.reads_within.is_dir():
        raise UsageError(f"--train-dir {train_dir.reads_within} does not exist; check the path")
    if args.status:
        if foreign:
            return status.show(train_dir, foreign.config, args.json, foreign.source)
        return status.show(train_dir, read_config(args, train_dir), args.json)
    if args.checkpoint:
        return run_adhoc(args, train_dir, device, foreign)
    return run_daemon(args, train_dir, device, foreign)


if __name__ == "__main__":
    cli.run("eval.py", main)
