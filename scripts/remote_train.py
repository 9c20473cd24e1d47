"""Remote training: the guide's steps 1, 2, 5 and 6 (setup, upload, train in tmux, download).

    python -m remote_train preflight --run R --pod-settings JSON --train-yaml Y --data D \
        --dataset-info I [--output preflight.json]          (the checks of submit; nothing launched)
    python -m remote_train submit ... --output launch.json
    python -m remote_train wait ... --launch launch.json --output finished.json --remote-log L
    python -m remote_train fetch --run R --pod-settings JSON --launch launch.json \
        --finished finished.json --adapter-dir lora_adapters/R_peft --summary S --trainer-state T

``--pod-settings`` is the run's ``pods:`` entry as JSON plus its ``name`` (rules/train.smk passes it
as a resource), or the path of a file holding that JSON. The work itself lives in ``pod/``
(launch, follow, fetch, preflight); this module is only the command line the rules call.
Messages go to stderr, which the rule's log keeps (scripts/logged.sh).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from fileio import read_json_object, write_json
from pod import fetch, follow, launch, preflight, runpod
from pod.executor import make_executor
from pod.messages import STOPPED, PodError, Say, Stopped, TrainingFailed, Unreachable
from pod.settings import load_settings, with_defaults


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP end it as Ctrl-C does: cleaned up, with a message."""
    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "preflight": "check the pod for this run; launch nothing",
        "submit": "launch the training, or attach to it",
        "wait": "follow the training to its end (resume it if it died)",
        "fetch": "download the best checkpoint's adapter",
    }
    for name, text in commands.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("--run", required=True)
        p.add_argument("--pod-settings", required=True,
                       help="the run's pods: entry (with its name) as JSON, or a file holding it")
        if name != "fetch":
            p.add_argument("--train-yaml", required=True)
            p.add_argument("--data", required=True)
            p.add_argument("--dataset-info", required=True)
            p.add_argument("--output", required=name != "preflight", help="the record to write")
        if name == "submit":
            p.add_argument("--estimate", help="the plan's GPU time and cost estimate (JSON), recorded")
        if name in ("wait", "fetch"):
            p.add_argument("--launch", required=True)
        if name == "wait":
            p.add_argument("--remote-log", required=True, help="mirror of the remote train.log")
        if name == "fetch":
            for option in ("--finished", "--adapter-dir", "--summary", "--trainer-state"):
                p.add_argument(option, required=True)
    return parser


def _record(path: str, what: str) -> dict:
    return read_json_object(path, PodError, f"{what}; run snakemake again to rebuild it")


def _command(args, settings: dict, ex, files, say: Say) -> None:
    if args.command == "fetch":
        summary = fetch.fetch(args.run, settings, ex, _record(args.launch, "the launch record"),
                              _record(args.finished, "the finish record"), Path(args.adapter_dir),
                              Path(args.summary), Path(args.trainer_state), say)
        say(f"{args.adapter_dir}: checkpoint-{summary['best_step']} of {summary['total_steps']} steps")
    elif args.command == "preflight":
        report = preflight.run_preflight(ex, settings, files.args, files.examples(), say)
        say(f"preflight passed on {ex.where()}")
        if args.output:
            write_json(args.output, report.as_dict())
    elif args.command == "submit":
        record = launch.submit(files, settings, ex, say)
        if args.estimate:
            record["estimate"] = json.loads(args.estimate)
        write_json(args.output, record)
    else:
        record = follow.wait(files, settings, ex, _record(args.launch, "the launch record"),
                             Path(args.remote_log), say)
        write_json(args.output, record)


def _gives_back(command: str, exc: BaseException) -> bool:
    """Whether a failed command stops the rented pod now; otherwise its guard stops it once
    nothing trains on it."""
    if isinstance(exc, TrainingFailed):
        return True
    if isinstance(exc, (KeyboardInterrupt, Unreachable)):
        return False  # the training may go on there (Ctrl-C, a lost connection)
    return command != "wait"  # preflight, submit, fetch: nothing of this run trains


def _rented(args, settings: dict, files, say: Say) -> None:
    """A command on a pod the graph rents: rent (or start) it, guard it, and give it back as
    soon as nothing needs it. A failure stops it, except while a training may still go on (a lost
    connection during wait: the pod's guard stops it once nothing trains)."""
    workdir = Path.cwd()
    settings = runpod.rent(settings, args.run, workdir, say)
    try:
        ex = make_executor(settings)
        runpod.start_guard(ex, settings)
        _command(args, settings, ex, files, say)
    except (PodError, KeyboardInterrupt) as exc:
        if _gives_back(args.command, exc):
            runpod.release(settings, args.run, workdir, say, failed=True)
        raise
    if args.command in ("fetch", "preflight"):
        runpod.release(settings, args.run, workdir, say)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    say = Say(args.run)
    _stop_on_signals()
    try:
        settings = with_defaults(load_settings(args.pod_settings))
        rented = settings.get("provider") == "runpod"
        # The inputs are read (and hashed) before a pod is rented; fetch reads none.
        files = None if args.command == "fetch" else launch.RunFiles.load(
            args.run, args.train_yaml, args.data, args.dataset_info)
        if not rented:
            _command(args, settings, make_executor(settings), files, say)
        else:
            _rented(args, settings, files, say)
    except KeyboardInterrupt as exc:
        say(str(exc) if isinstance(exc, Stopped) else STOPPED[args.command])
        return 130
    except PodError as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
