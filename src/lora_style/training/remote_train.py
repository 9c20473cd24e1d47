"""Remote training: the guide's steps 1, 2, 5 and 6 (setup, upload, train in tmux, download).

    python -m lora_style.training.remote_train preflight --run R --pod-settings JSON --train-yaml Y --data D \
        --dataset-info I [--output preflight.json]          (the checks of submit; nothing launched)
    python -m lora_style.training.remote_train submit ... --output launch.json
    python -m lora_style.training.remote_train wait ... --launch launch.json --output finished.json --remote-log L
    python -m lora_style.training.remote_train fetch --run R --pod-settings JSON --launch launch.json \
        --finished finished.json --adapter-dir lora_adapters/R_peft --summary S --trainer-state T

For a pod the graph rents from RunPod (provider: runpod), two more, by hand:

    python -m lora_style.training.remote_train prices --config config/config.yaml --pod NAME
        (RunPod's GPU catalog into .state/runpod/catalog.json: the plan's cost line prices from it)
    python -m lora_style.training.remote_train bill --config config/config.yaml --pod NAME --run R
        (what RunPod billed for the pod, read again into the run's training_summary.json)

``--pod-settings`` is the run's ``pods:`` entry as JSON plus its ``name`` (rules/train.smk passes it
as a resource), or the path of a file holding that JSON; it becomes one frozen PodSettings
(settings.py) here. The work itself lives beside this module (launch, follow, fetch, preflight,
runpod); this module is only the command line the rules call.
Messages go to stderr, which the rule's log keeps (scripts/logged.sh).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import replace
from pathlib import Path

import yaml

from lora_style.fileio import read_json_object, write_atomic, write_json
from lora_style.training import (
    cost,
    estimate,
    fetch,
    follow,
    launch,
    preflight,
    runpod,
    runpod_account,
    runpod_catalog,
)
from lora_style.training.machines import make_executor
from lora_style.training.messages import STOPPED, PodError, Say, Stopped, TrainingFailed, Unreachable
from lora_style.training.runpod_api import RunPodAPI
from lora_style.training.settings import PodSettings, load_settings


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
        p.add_argument(
            "--pod-settings",
            required=True,
            help="the run's pods: entry (with its name) as JSON, or a file holding it",
        )
        if name != "fetch":
            p.add_argument("--train-yaml", required=True)
            p.add_argument("--data", required=True)
            p.add_argument("--dataset-info", required=True)
            p.add_argument("--eval-data", help="the held-out examples (train.yaml's eval_dataset)")
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
            p.add_argument(
                "--reference-eval",
                help="where to record the chosen checkpoint's evaluation on the pod (fetch.reference_eval)",
            )
            p.add_argument(
                "--reference-examples",
                type=int,
                default=64,
                help="how many held-out examples it reads (0: no evaluation)",
            )
    for name, text in (
        ("prices", "read RunPod's GPU catalog for the plan's cost line"),
        ("bill", "read what RunPod billed for a run's pod (again)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", default="config/config.yaml", help="the graph's config file")
        p.add_argument("--pod", required=True, help="the pods: entry (provider: runpod)")
        if name == "bill":
            p.add_argument("--run", required=True, help="the run whose summaries get the bill")
    return parser


def _record(path: str, what: str) -> dict:
    return read_json_object(path, PodError, f"{what}; run snakemake again to rebuild it")


def _command(args, settings: PodSettings, ex, files, say: Say) -> None:
    if args.command == "fetch":
        summary = fetch.fetch(
            args.run,
            settings,
            ex,
            _record(args.launch, "the launch record"),
            _record(args.finished, "the finish record"),
            Path(args.adapter_dir),
            Path(args.summary),
            Path(args.trainer_state),
            say,
            args.reference_examples,
            Path(args.reference_eval) if args.reference_eval else None,
        )
        say(f"{args.adapter_dir}: checkpoint-{summary['best_step']} of {summary['total_steps']} steps")
        say(f"results: {summary['advice']}")
        _learn_rate(args.run, summary, _record(args.launch, "the launch record"), say)
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
        record = follow.wait(
            files, settings, ex, _record(args.launch, "the launch record"), Path(args.remote_log), say
        )
        write_json(args.output, record)


def _learn_rate(run: str, summary: dict, launch_rec: dict, say: Say) -> None:
    """The run's measured rate into .state/rates.json, which the next plan prefers over
    config/rates.yaml (cost.learned_rate)."""
    planned = launch_rec.get("estimate") or {}
    if not planned.get("profile"):
        return  # a launch record from before the plan recorded its estimate
    key = cost.rate_key(
        planned["profile"],
        planned.get("gpu_type"),
        planned.get("gpus") or 1,
        planned.get("cutoff_len"),
        planned.get("packing"),
    )
    steps = summary.get("total_steps")
    tokens = summary.get("tokens_seen") or (
        planned["tokens_per_step"] * steps if planned.get("tokens_per_step") and steps else None
    )
    entry = cost.record_rate(
        key, run, summary.get("run_id", ""), steps, summary.get("wall_time_s") or 0, tokens
    )
    if entry:
        say(
            f"measured {cost.rate_text(entry['steps_per_hour'])} steps/h ({entry['steps']} steps in "
            f"{entry['wall_seconds']:.0f} s); recorded in {cost.LEARNED_RATES} for the next plan"
        )


def _gives_back(command: str, exc: BaseException) -> bool:
    """Whether a failed command stops the rented pod now; otherwise its guard stops it once
    nothing trains on it."""
    if isinstance(exc, TrainingFailed):
        return True
    if isinstance(exc, (KeyboardInterrupt, Unreachable)):
        return False  # the training may go on there (Ctrl-C, a lost connection)
    return command != "wait"  # preflight, submit, fetch: nothing of this run trains


RECOVERIES = 2  # a pod RunPod stopped under one job is started (or replaced) this often


def _need(args, files, estimate_json: str | None) -> dict:
    """What the run needs of a GPU, for the alternatives when gpu_type is out of stock."""
    need = dict(json.loads(estimate_json)) if estimate_json else {}
    if files is not None:
        arch = estimate.model_arch(str(files.args.get("model_name_or_path", "")))
        if arch is not None:
            need["memory_gb"] = estimate.estimate_memory(arch, files.args).total
    return need


def _rented(args, settings: PodSettings, files, say: Say) -> None:
    """A command on a pod the graph rents: rent (or start) it, guard it, and give it back as
    soon as nothing needs it. A failure stops it, except while a training may still go on (a lost
    connection during wait: the pod's guard stops it once nothing trains). A pod RunPod stops
    under the job is noticed (the API is asked when SSH fails), started again or replaced, and
    the command goes on there: wait resumes the training from its last checkpoint."""
    workdir = Path.cwd()
    need = _need(args, files, getattr(args, "estimate", None))
    for attempt in range(RECOVERIES + 1):
        rented = replace(
            runpod.rent(settings, args.run, workdir, say, need),
            on_lost_contact=lambda: runpod.check_running(settings, workdir),
        )
        try:
            ex = make_executor(rented)
            runpod.start_guard(ex, rented, say)
            _command(args, rented, ex, files, say)
            break
        except runpod.PodStopped as exc:
            if attempt == RECOVERIES:
                raise PodError(
                    f"{exc}, again ({RECOVERIES + 1} times in this job); run again "
                    "later, or rent elsewhere (gpu_type, cloud_type)"
                ) from None
            say(
                f"{exc}: stopped under this job (RunPod's maintenance, a balance at $0, the "
                "console, or a guard); starting it again, and the training resumes from its "
                "last checkpoint"
            )
        except (PodError, KeyboardInterrupt) as exc:
            if _gives_back(args.command, exc):
                runpod.release(settings, args.run, workdir, say, failed=True)
            raise
    if args.command in ("fetch", "preflight"):
        record = runpod.release(settings, args.run, workdir, say)
        if record is not None and args.command == "fetch":
            _record_bill(
                settings, record, [Path(args.summary), Path(args.adapter_dir) / "training_summary.json"], say
            )


def _record_bill(settings: PodSettings, record: dict, summaries: list[Path], say: Say) -> None:
    """RunPod's bill for the pod into the run's summaries; a failure to read it costs nothing."""
    try:
        bill = runpod_account.bill(settings, record, say)
    except PodError as exc:
        say(
            f"could not read RunPod's bill for the pod yet ({str(exc).splitlines()[0]}); read it "
            "later: python -m lora_style.training.remote_train bill (docs/runpod.md)"
        )
        return
    for path in summaries:
        if path.exists():
            summary = read_json_object(path, PodError)
            write_atomic(path, (json.dumps({**summary, "runpod_bill": bill}, indent=2) + "\n").encode())
    say(
        f"RunPod billed ${bill['total_usd']:.2f} for the pod so far (GPU ${bill['gpu_usd']:.2f}, "
        f"disk ${bill['disk_usd']:.2f}; read {bill['read_at']}, billing can lag)"
    )


def _by_hand(args, say: Say) -> None:
    """prices and bill: a pods: entry of the config file, and the project's .state/."""
    try:
        config = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PodError(f"{args.config}: cannot read it ({exc})") from None
    entry = (config.get("pods") or {}).get(args.pod)
    if not isinstance(entry, dict) or entry.get("provider") != "runpod":
        raise PodError(f"{args.config}: pods.{args.pod} is not a pod with provider: runpod")
    settings = PodSettings.from_entry({**entry, "name": args.pod})
    if args.command == "prices":
        runpod_catalog.read_catalog(RunPodAPI(settings, say), settings, Path.cwd())
        path = runpod_catalog.catalog_path(Path.cwd())
        say(
            f"RunPod's GPU catalog ({settings.cloud_type} cloud) written to {path}; the "
            "plan's cost line now prices from it"
        )
        return
    record = runpod.read_record(settings, Path.cwd())
    if not record.get("id"):
        raise PodError(
            f"no pod of pods.{args.pod} is recorded in .state/runpod/ here; run this "
            "in the folder snakemake ran in"
        )
    _record_bill(
        settings,
        record,
        [
            Path(f"results/{args.run}/train/training_summary.json"),
            Path(f"lora_adapters/{args.run}_peft/training_summary.json"),
        ],
        say,
    )


def _stopped_message(args, settings: PodSettings | None) -> str:
    """What Ctrl-C means; for wait on a rented pod, what RunPod reports of it (a pod RunPod
    stopped trains nothing)."""
    if args.command == "wait" and settings is not None and settings.provider == "runpod":
        pod = runpod.pod_status(settings, Path.cwd())
        if pod is not None and pod["status"] not in runpod.UP:
            return (
                f"stopped following; RunPod reports pod {pod['id']} {pod['status']}, so "
                "nothing trains there now. Run snakemake again: it starts the pod and the "
                "training resumes from its last checkpoint"
            )
    return STOPPED.get(args.command, "stopped")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    say = Say(getattr(args, "run", None) or getattr(args, "pod", ""))
    _stop_on_signals()
    settings: PodSettings | None = None
    try:
        if args.command in ("prices", "bill"):
            _by_hand(args, say)
            return 0
        settings = load_settings(args.pod_settings)
        rented = settings.provider == "runpod"
        # The inputs are read (and hashed) before a pod is rented; fetch reads none.
        files = (
            None
            if args.command == "fetch"
            else launch.RunFiles.load(args.run, args.train_yaml, args.data, args.dataset_info, args.eval_data)
        )
        if not rented:
            _command(args, settings, make_executor(settings), files, say)
        else:
            _rented(args, settings, files, say)
    except KeyboardInterrupt as exc:
        say(str(exc) if isinstance(exc, Stopped) else _stopped_message(args, settings))
        return 130
    except PodError as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
