"""Start a run on the pod: its identity, the upload, the detached launch, and submit.

Each run lives on the pod in ``<remote_dir>/<run>-<hash>/`` (run_state.py lists what is in it),
the hash taken over what training reads (train.yaml, the data, dataset_info.json, a local base
model's files). So changed data starts a new folder and never mixes with, or deletes, an older
run's checkpoints, and a rerun with the same inputs finds its folder and re-attaches to the
training there, live or finished, instead of launching a second one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lora_style.config.train_yaml import deepspeed_file
from lora_style.fileio import count_lines, sha256_file

from . import cost, pod_setup, preflight, processes, shell
from .executor import Executor
from .messages import BEFORE_LAUNCH, LAUNCH_CUT, PodError, Say, Unreachable, stopped_as
from .run_state import (
    RunState,
    holding,
    now_iso,
    read_remote_json,
    read_state,
    remote_hashes,
    write_remote_json,
)
from .settings import PodSettings

# Where each uploaded file goes in the run folder (the train.yaml paths are relative to it).
UPLOAD_LAYOUT = {
    "train_yaml": "train.yaml",
    "data": "data/train.jsonl",
    "dataset_info": "data/dataset_info.json",
    "eval_data": "data/eval.jsonl",  # the held-out side, when train.yaml names an eval_dataset
}


# --------------------------------------------------------------------------- the run's identity


def base_fingerprint(model_name_or_path: str) -> str | None:
    """A local base model's identity: its small files' contents, its large files' names and sizes."""
    if not model_name_or_path:
        return None  # Path("") is the current folder, not a model
    root = Path(os.path.expanduser(model_name_or_path))
    if not root.is_dir():
        return None  # a hub id: the name in train.yaml is its identity
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        size = path.stat().st_size
        content = sha256_file(path) if size <= 64 * 2**20 else f"size:{size}"
        digest.update(f"{rel}\0{content}\n".encode())
    return digest.hexdigest()


@dataclass
class RunFiles:
    """What one training reads, and the identity derived from it."""

    run: str
    files: dict[str, Path]  # key of UPLOAD_LAYOUT -> local path
    args: dict = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    digest: str = ""
    extra: dict[str, Path] = field(default_factory=dict)  # run-folder path -> local file

    @classmethod
    def load(
        cls, run: str, train_yaml: str, data: str, dataset_info: str, eval_data: str | None = None
    ) -> RunFiles:
        files = {"train_yaml": Path(train_yaml), "data": Path(data), "dataset_info": Path(dataset_info)}
        args = yaml.safe_load(files["train_yaml"].read_text(encoding="utf-8")) or {}
        if args.get("eval_dataset"):
            # The held-out side of the graph's split: beside the training side unless named.
            held_out = Path(eval_data) if eval_data else Path(data).with_name("eval.jsonl")
            if not held_out.is_file():
                raise PodError(
                    f"{train_yaml}: eval_dataset {args['eval_dataset']} has no file {held_out}; "
                    "run snakemake again (validate_dataset writes it)"
                )
            files["eval_data"] = held_out
        sha = {UPLOAD_LAYOUT[key]: sha256_file(path) for key, path in files.items()}
        base = base_fingerprint(str(args.get("model_name_or_path", "")))
        if base:
            sha["base_model"] = base
        # The DeepSpeed config train.yaml names (deepspeed/ds_z3.json) goes along; its content is
        # part of the identity, so an edit of config/deepspeed/ never mixes with older checkpoints.
        extra = {}
        local = deepspeed_file(args)
        if local is not None:
            if not local.is_file():
                raise PodError(
                    f"{train_yaml}: deepspeed: {args['deepspeed']} has no file {local}; "
                    "name one of config/deepspeed/ in the profile"
                )
            extra[str(args["deepspeed"])] = local
            sha[str(args["deepspeed"])] = sha256_file(local)
        digest = hashlib.sha256(json.dumps(sha, sort_keys=True).encode()).hexdigest()
        return cls(run, files, args, sha, digest, extra)

    def uploads(self) -> dict[str, Path]:
        """Run-folder path -> local file of everything uploaded that training reads."""
        return {
            **{rel: self.files[key] for key, rel in UPLOAD_LAYOUT.items() if key in self.files},
            **self.extra,
        }

    @property
    def run_id(self) -> str:
        return f"{self.run}-{self.digest[:12]}"

    @property
    def session(self) -> str:
        return f"lora-{self.run_id}"

    def examples(self) -> int:
        return count_lines(self.files["data"])


# ------------------------------------------------------------------------ upload and launch


def guarded(settings: PodSettings) -> bool:
    """A rented pod (idle stop) or a budget: the pod's guard runs next to the training."""
    return bool(settings.provider) or cost.budget_seconds(settings) is not None


def upload(
    ex: Executor, files: RunFiles, run_dir: str, settings: PodSettings | None = None, say: Say | None = None
) -> None:
    """rsync the run's files and run.sh into its folder, then check them by sha256 there. With
    a budget or on a rented pod, guard.sh and the run's budget_seconds go along. A long upload
    (a large data set) reports its progress through `say`."""
    settings = settings or PodSettings()
    with tempfile.TemporaryDirectory(prefix="lora-upload-") as tmp:
        stage = Path(tmp)
        # The inputs (and the DeepSpeed config), content only; put() has rsync's delta algorithm
        # decide what to send (--ignore-times), not its quick check on size and time.
        for rel, local in files.uploads().items():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, stage / rel)
        # How many processes train (processes.py): in the folder, so `sh run.sh` by hand agrees.
        (stage / "train.env").write_text(processes.train_env(settings, files.args))
        (stage / "run.sh").write_text(shell.script("run.sh"))
        if guarded(settings):
            (stage / "guard.sh").write_text(shell.script("guard.sh"))
        budget = cost.budget_seconds(settings)
        if budget is not None:
            (stage / "budget_seconds").write_text(f"{budget}\n")
        (stage / "run.json").write_text(
            json.dumps(
                {
                    "run": files.run,
                    "run_id": files.run_id,
                    "input_sha256": files.digest,
                    "inputs": files.sha256,
                    "processes": processes.world_size(settings),
                    "uploaded_at": now_iso(),
                },
                indent=2,
            )
            + "\n"
        )
        result = ex.run("prepare_upload.sh", run_dir, files.run, timeout=120)
        if result.rc:
            raise PodError(f"cannot create {run_dir} on {ex.where()}: {result.err.strip()}")
        # An earlier upload of this run (before a data edit): rsync sends only the differences.
        basis = shell.first(result.facts, "basis") or None
        sent = ex.bytes_sent
        try:
            ex.put(stage, run_dir, say=say, basis=basis)
        except Unreachable as exc:  # cut off mid-file: what arrived is checked, never trained on
            raise PodError(
                f"the upload to {ex.where()} was cut off ({exc.short}); nothing was "
                "launched. Run snakemake again: it sends what is missing and checks "
                "every file's sha256 there before training"
            ) from None
        if say and ex.bytes_sent > sent:
            size = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
            say(
                f"uploaded {size:,} bytes of run files to {ex.where()}: {ex.bytes_sent - sent:,} "
                "bytes sent" + (f" (only the changes against {basis})" if basis else "")
            )
    remote = remote_hashes(ex, run_dir, list(files.uploads()))
    for rel in files.uploads():
        if remote.get(rel, (0, ""))[1] != files.sha256[rel]:
            raise PodError(
                f"upload of {rel} to {ex.where()} did not arrive intact (sha256 differs); run again"
            )


# What the training may need to be given and nothing else may see: a Hugging Face token for a
# gated base model (Llama, Gemma). It travels on launch.sh's stdin into the training's environment.
SECRET_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def secrets_for_training(environ: dict | None = None) -> bytes:
    """`NAME=value` lines for launch.sh's stdin: the Hugging Face token from this environment,
    else the one `huggingface-cli login` stored (huggingface_hub's own lookup). Never an argument
    (which `ps` shows to everyone on the pod), never a file, never a log line."""
    environ = os.environ if environ is None else environ
    found = {name: environ[name] for name in SECRET_VARIABLES if environ.get(name)}
    if not found:
        try:
            from huggingface_hub import get_token

            token = get_token()
        except Exception:  # not installed, or an unreadable token file: the training goes without
            token = None
        if token:
            found["HF_TOKEN"] = token
    return "".join(f"{name}={value}\n" for name, value in found.items() if "\n" not in value).encode()


def start_detached(
    ex: Executor, run_dir: str, session: str, cli: str, settings: PodSettings | None = None
) -> dict[str, list[str]]:
    """launch.sh: start run.sh detached unless an attempt is alive (and the pod's guard, where
    the run folder has one); its @@ answers."""
    settings = settings or PodSettings()
    idle = int(60 * float(settings.idle_stop_minutes)) if settings.provider else 0
    secrets = secrets_for_training()
    return ex.run(
        "launch.sh",
        run_dir,
        session,
        cli,
        idle,
        settings.api_url,
        "stdin" if secrets else "",
        timeout=120,
        stdin=secrets,
    ).facts


def launch(ex: Executor, settings: PodSettings, files: RunFiles, state: RunState, say: Say) -> dict:
    """Setup (opt-in), preflight, upload, start detached. Returns what was launched."""
    record: dict = {}
    # On a rented pod, its guard must not stop it for idleness during a long setup or upload.
    hold = holding(ex, settings.remote_dir) if settings.provider else nullcontext()
    with hold, stopped_as(BEFORE_LAUNCH):
        if settings.setup:
            if settings.provider:
                ex.run("hold.sh", settings.remote_dir, 2 * 3600, timeout=60)  # pip takes long
            record["setup"] = pod_setup.pod_setup(ex, settings, say, files.args)
        report = preflight.run_preflight(ex, settings, files.args, files.examples(), say)
        run_dir = f"{report.remote_dir}/{files.run_id}"
        upload(ex, files, run_dir, settings, say)
        with stopped_as(LAUNCH_CUT):
            facts = ex.submit_job(run_dir, files.session, report.cli_path)  # Slurm: sbatch
            if facts is None:
                facts = start_detached(ex, run_dir, files.session, report.cli_path, settings)
    with stopped_as(LAUNCH_CUT):
        slurm = shell.first(facts, "detach") == "sbatch"
        job = shell.first(facts, "job") or (shell.first(facts, "already") if slurm else "")
        start = f"resuming from checkpoint-{state.checkpoint}" if state.checkpoint else "from step 0"
        if "busy" in facts:
            raise PodError(
                f"another launch of {files.run_id} is in progress on {ex.where()}; "
                "run again in a minute to attach to it"
            )
        if "already" in facts:
            pid, detach = shell.first(facts, "already"), "attached"
            what = f"Slurm job {pid}" if slurm else f"pid {pid}"
            say(f"{files.run_id} is already queued or running there ({what}); attached, nothing launched")
        else:
            pid, detach = shell.first(facts, "pid"), shell.first(facts, "detach")
            if job:
                say(f"submitted {files.run_id} to {ex.where()} as Slurm job {job} ({start})")
            elif not pid:
                raise PodError(f"training did not start on {ex.where()}; see {run_dir}/train.log there")
            else:
                say(f"launched {files.run_id} on {ex.where()} ({start}; pid {pid}, detached with {detach})")
            if detach == "tmux":
                say(f"watch it there: tmux -L {files.session} attach")
        record.update(
            {
                "pid": pid,
                "detach": detach,
                "session": files.session if detach == "tmux" else None,
                "slurm_job": job or None,
                "resumed_from": state.checkpoint,
                "launched_at": now_iso(),
                "preflight": report.as_dict(),
                "llamafactory_version": report.llamafactory_version,
                "remote_dir": report.remote_dir,
                "usd_per_hour": cost.usd_per_hour(settings),
                "budget_seconds": cost.budget_seconds(settings),
            }
        )
        return record


def launch_record(
    files: RunFiles,
    ex: Executor,
    action: str,
    state: RunState,
    attempt: dict | None = None,
    previous: dict | None = None,
) -> dict:
    previous = previous or {}
    remote_dir = (attempt or {}).get("remote_dir") or state.remote_dir or previous.get("remote_dir")
    return {
        "run": files.run,
        "run_id": files.run_id,
        "input_sha256": files.digest,
        "inputs": files.sha256,
        "pod": ex.name,
        "executor": ex.kind,
        "where": ex.where(),
        "remote_dir": remote_dir,
        "run_dir": f"{remote_dir}/{files.run_id}",
        "action": action,
        "state_found": state.status,
        "attempt": attempt,
        "llamafactory_version": (attempt or {}).get("llamafactory_version")
        or previous.get("llamafactory_version"),
        "estimate": previous.get("estimate"),
        "recorded_at": now_iso(),
    }


def launch_and_record(
    ex: Executor,
    settings: PodSettings,
    files: RunFiles,
    state: RunState,
    say: Say,
    previous: dict | None = None,
) -> dict:
    """Launch (or resume) the run and leave its launch record in the run folder."""
    attempt = launch(ex, settings, files, state, say)
    with stopped_as(LAUNCH_CUT):
        record = launch_record(
            files, ex, "resumed" if state.checkpoint else "launched", state, attempt, previous
        )
        write_remote_json(ex, f"{record['run_dir']}/launch.json", record)
    return record


def submit(files: RunFiles, settings: PodSettings, ex: Executor, say: Say) -> dict:
    """Launch the run, or attach to it when its folder on the pod already trains or has finished."""
    try:
        state = read_state(ex, settings.remote_dir, files.run_id)
    except PodError as exc:  # unreachable, or refused (a changed host key, a key it rejects)
        raise PodError(f"preflight failed; nothing was uploaded or launched: {exc}") from None
    if state.status in ("running", "finished", "cut"):
        say(f"{files.run_id} on {ex.where()} is {state.describe()}: attached, nothing launched")
        previous = read_remote_json(ex, f"{state.remote_dir}/{files.run_id}/launch.json")
        return launch_record(files, ex, "attached", state, previous.get("attempt"), previous)
    if state.status != "new":
        say(f"{files.run_id} on {ex.where()} is {state.describe()}: starting it again")
    return launch_and_record(ex, settings, files, state, say)
