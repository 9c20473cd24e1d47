"""Remote training: the guide's steps 1, 2, 5 and 6 (setup, upload, train in tmux, download).

    python -m remote_train submit --run R --pod-settings JSON --train-yaml Y --data D --dataset-info I \
        --output launch.json
    python -m remote_train wait ... --launch launch.json --output finished.json --remote-log L
    python -m remote_train fetch --run R --pod-settings JSON --launch launch.json \
        --finished finished.json --adapter-dir lora_adapters/R_peft --summary S --plot P --trainer-state T
    python -m remote_train preflight ... (the checks of submit; nothing is launched)

``--pod-settings`` is the run's ``pods:`` entry as JSON plus its ``name`` (rules/train.smk passes it
as a resource), or the path of a file holding that JSON.

Each run lives on the pod in ``<remote_dir>/<run>-<hash>/``, the hash taken over what training reads
(train.yaml, the data, dataset_info.json, a local base model's files). So changed data starts a new
folder and never mixes with, or deletes, an older run's checkpoints, and a rerun with the same
inputs finds its folder and re-attaches to the training there, live or finished, instead of
launching a second one. The folder holds:

    train.yaml  data/{train.jsonl,dataset_info.json}  run.json   what was uploaded
    run.sh          one training attempt; resumes from the newest complete checkpoint
    pid             the attempt's shell; alive = training runs
    exit_code       written when an attempt ends; 0 = finished
    attempts.log    `start <epoch> <from-step>` / `end <epoch> <rc>` per attempt
    train.log       LLaMA-Factory's output, all attempts
    output/         LLaMA-Factory's output_dir: checkpoint-N/, trainer_log.jsonl, trainer_state.json

Training runs detached (tmux when present, else ``setsid nohup``), so a closed laptop or a dropped
connection does not stop it. Each run gets a tmux server of its own (``tmux -L lora-<run_id>``): a
server started earlier would hand the training its old environment, not the launching shell's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

import best_checkpoint
import preflight
from executor import Executor, PodError, Unreachable, load_settings, make_executor
from validate_dataset import write_atomic

POLL_CAP = 4 * 2**20          # most bytes of each log fetched per poll
DEFAULT_POLL_SECONDS = 30
DEFAULT_RECONNECT_MINUTES = 60

# Where each uploaded file goes in the run folder (the train.yaml paths are relative to it).
UPLOAD_LAYOUT = {"train_yaml": "train.yaml", "data": "data/train.jsonl",
                 "dataset_info": "data/dataset_info.json"}


class TrainingFailed(PodError):
    """The remote training ended without finishing."""


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Say:
    """Messages for the user: to stderr (Snakemake shows them) and to the rule's log file."""

    def __init__(self, run: str, log: str | None = None):
        self.run = run
        self.log = open(log, "a", encoding="utf-8") if log else None

    def __call__(self, message: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        for line in message.splitlines() or [""]:
            print(f"[{self.run}] {line}", file=sys.stderr, flush=True)
            if self.log:
                self.log.write(f"{stamp} {line}\n")
                self.log.flush()


class Stopped(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM/SIGHUP) at a point that has a message of its own: str() is that message."""


@contextmanager
def stopped_as(message: str):
    """Within the block, an interruption says `message` (an inner block's message wins)."""
    try:
        yield
    except Stopped:
        raise
    except KeyboardInterrupt:
        raise Stopped(message) from None


# What an interruption means: by the step it cut (stopped_as), else by command (main).
BEFORE_LAUNCH = ("stopped before the launch; nothing was launched on the pod. Run snakemake again "
                 "to launch the training (or attach to it)")
LAUNCH_CUT = ("stopped during the launch, which may be incomplete on the pod. Run snakemake again: "
              "it re-attaches to the training if it started, else launches it")
STOPPED = {
    "preflight": "stopped; nothing was uploaded or launched",
    "submit": BEFORE_LAUNCH,
    "wait": "stopped following; the training goes on on the pod. Run snakemake again to re-attach",
    "fetch": "download stopped; nothing landed. Run snakemake again: it fetches again",
}


# --------------------------------------------------------------------------- the run's identity


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    files: dict[str, Path]         # key of UPLOAD_LAYOUT -> local path
    args: dict = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    digest: str = ""

    @classmethod
    def load(cls, run: str, train_yaml: str, data: str, dataset_info: str) -> "RunFiles":
        files = {"train_yaml": Path(train_yaml), "data": Path(data), "dataset_info": Path(dataset_info)}
        args = yaml.safe_load(files["train_yaml"].read_text(encoding="utf-8")) or {}
        sha = {UPLOAD_LAYOUT[key]: sha256_file(path) for key, path in files.items()}
        base = base_fingerprint(str(args.get("model_name_or_path", "")))
        if base:
            sha["base_model"] = base
        digest = hashlib.sha256(json.dumps(sha, sort_keys=True).encode()).hexdigest()
        return cls(run, files, args, sha, digest)

    @property
    def run_id(self) -> str:
        return f"{self.run}-{self.digest[:12]}"

    @property
    def session(self) -> str:
        return f"lora-{self.run_id}"

    def examples(self) -> int:
        with open(self.files["data"], "rb") as handle:
            return sum(1 for line in handle if line.strip())


# ------------------------------------------------------------------------- shell on the pod

# The newest checkpoint whose trainer_state.json exists (Trainer writes it last) -> $last.
LAST_CHECKPOINT_SH = """last=""
for d in output/checkpoint-*; do
  [ -f "$d/trainer_state.json" ] || continue
  n=${d##*-}
  case $n in ''|*[!0-9]*) continue ;; esac
  if [ -z "$last" ] || [ "$n" -gt "$last" ]; then last=$n; fi
done"""

# The state of the run folder in the current directory, as one `@@run` line. Alive means: the
# pid runs this folder's own run.sh by its absolute path (launch_script starts `sh "$here/run.sh"`
# with here=$(pwd -P)), not a process that got the pid after a pod restart, another run's run.sh
# included.
RUN_STATE_SH = LAST_CHECKPOINT_SH + """
alive=0; pid=""; rc=""
[ -f pid ] && pid=$(cat pid)
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
  if [ -r "/proc/$pid/cmdline" ]; then args=$(tr '\\000' ' ' < "/proc/$pid/cmdline")
  else args=$(ps -o args= -p "$pid" 2>/dev/null); fi
  case " $args " in *" $(pwd -P)/run.sh "*) alive=1 ;; esac
fi
[ -f exit_code ] && rc=$(cat exit_code)
launched=0; [ -f run.sh ] && launched=1
final=0; [ -f output/trainer_state.json ] && final=1
echo "@@run launched=$launched alive=$alive pid=$pid rc=$rc checkpoint=$last final=$final\""""


def run_sh(cli: str, run_id: str) -> str:
    """One training attempt. Started again after a crash, it resumes instead of restarting."""
    return f"""#!/bin/sh
# One training attempt of {run_id}, written by scripts/remote_train.py.
# It resumes from the newest complete checkpoint in output/, so a second start never goes
# back to step 0; overwrite_output_dir=false then keeps output/trainer_log.jsonl.
cd "$(dirname "$0")" || exit 1
echo $$ > pid
{LAST_CHECKPOINT_SH}
if [ -n "$last" ]; then
  set -- "resume_from_checkpoint=output/checkpoint-$last" overwrite_output_dir=false
  echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) resuming from output/checkpoint-$last" >> train.log
else
  set -- overwrite_output_dir=true
  echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) starting" >> train.log
fi
echo "start $(date +%s) ${{last:-0}}" >> attempts.log
{shlex.quote(cli)} train train.yaml "$@" >> train.log 2>&1 < /dev/null
rc=$?
echo "end $(date +%s) $rc" >> attempts.log
echo "$rc" > exit_code.tmp && mv exit_code.tmp exit_code
exit $rc
"""


def cd_run(run_dir: str) -> str:
    return f"cd {shlex.quote(run_dir)} 2>/dev/null || {{ echo '@@no_run_dir'; exit 0; }}\n"


def state_script(remote_dir: str, run_id: str) -> str:
    return (preflight.expand_home("dir", remote_dir)
            + 'if cd "$dir" 2>/dev/null; then echo "@@dir $(pwd -P)"; else echo "@@no_dir"; exit 0; fi\n'
            + f"cd {shlex.quote(run_id)} 2>/dev/null || {{ echo '@@no_run_dir'; exit 0; }}\n"
            + RUN_STATE_SH + "\n")


def poll_script(run_dir: str, log_offset: int, trainer_log_offset: int) -> str:
    """State plus what both logs gained since the offsets (at most POLL_CAP bytes each): header
    line, then the raw bytes."""
    chunk = f"""size=0; [ -f "$f" ] && size=$(wc -c < "$f" | tr -d ' ')
[ "$size" -lt "$off" ] && off=0
n=$((size - off)); [ "$n" -gt {POLL_CAP} ] && n={POLL_CAP}
echo "@@chunk $off $n\"
if [ "$n" -gt 0 ]; then tail -c +$((off + 1)) "$f" | head -c "$n"; fi
"""
    return (cd_run(run_dir) + RUN_STATE_SH + "\n"
            + f"f=train.log; off={int(log_offset)}\n" + chunk
            + f"f=output/trainer_log.jsonl; off={int(trainer_log_offset)}\n" + chunk)


def launch_script(run_dir: str, session: str) -> str:
    """Start run.sh detached, unless an attempt is alive; report how and its pid."""
    q = shlex.quote
    return cd_run(run_dir) + f"""if command -v flock >/dev/null 2>&1; then
  exec 9> .launch.lock
  flock -n 9 || {{ echo "@@busy"; exit 0; }}
fi
{RUN_STATE_SH}
if [ "$alive" = 1 ]; then echo "@@already $pid"; exit 0; fi
rm -f exit_code pid
here=$(pwd -P)
started=0
if command -v tmux >/dev/null 2>&1; then
  tmux -L {q(session)} kill-server 2>/dev/null
  if tmux -L {q(session)} new-session -d -s {q(session)} -c "$here" sh "$here/run.sh" 9>&-; then
    echo "@@detach tmux"; started=1
  fi
fi
if [ $started = 0 ]; then
  if command -v setsid >/dev/null 2>&1; then
    setsid nohup sh "$here/run.sh" > /dev/null 2>&1 < /dev/null 9>&- &
    echo "@@detach setsid nohup"
  else
    nohup sh "$here/run.sh" > /dev/null 2>&1 < /dev/null 9>&- &
    echo "@@detach nohup"
  fi
fi
i=0
while [ ! -s pid ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
echo "@@pid $(cat pid 2>/dev/null)"
"""


def hashes_script(run_dir: str, rel_paths: list[str]) -> str:
    """Size and sha256 of files in the run folder, as `@@file size sha256 path` lines."""
    files = " ".join(shlex.quote(p) for p in rel_paths)
    return cd_run(run_dir) + f"""h() {{ if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1"; else shasum -a 256 "$1"; fi; }}
for f in {files}; do
  if [ -f "$f" ]; then echo "@@file $(wc -c < "$f" | tr -d ' ') $(h "$f" | cut -d ' ' -f 1) $f"
  else echo "@@missing $f"; fi
done
"""


# ------------------------------------------------------------------------------ run state


@dataclass
class RunState:
    remote_dir: str = ""          # absolute, on the pod
    exists: bool = False
    launched: bool = False
    alive: bool = False
    pid: str = ""
    rc: str = ""
    checkpoint: int | None = None
    final: bool = False

    @property
    def status(self) -> str:
        if not self.exists or not self.launched:
            return "new"
        if self.alive:
            return "running"
        if self.rc == "0":
            return "finished"
        if self.rc:
            return "killed" if int(self.rc) >= 128 else "failed"
        return "died"

    def describe(self) -> str:
        at = f" (newest checkpoint: checkpoint-{self.checkpoint})" if self.checkpoint else " (no checkpoint yet)"
        return {
            "new": "not started",
            "running": f"running (pid {self.pid})",
            "finished": "finished",
            "killed": f"killed by signal {int(self.rc or 0) - 128 if self.rc else '?'}" + at,
            "failed": f"failed with exit status {self.rc}" + at,
            "died": "gone without an exit status (pod restarted or process killed)" + at,
        }[self.status]


def parse_state(facts: dict) -> RunState:
    state = RunState(remote_dir=preflight.first(facts, "dir"))
    line = preflight.first(facts, "run")
    if "no_run_dir" in facts or "no_dir" in facts or not line:
        return state
    values = dict(item.partition("=")[::2] for item in line.split())
    state.exists = True
    state.launched = values.get("launched") == "1"
    state.alive = values.get("alive") == "1"
    state.pid = values.get("pid", "")
    state.rc = values.get("rc", "")
    state.checkpoint = int(values["checkpoint"]) if values.get("checkpoint", "").isdigit() else None
    state.final = values.get("final") == "1"
    return state


def read_state(ex: Executor, remote_dir: str, run_id: str) -> RunState:
    result = ex.sh(state_script(remote_dir, run_id), timeout=120)
    return parse_state(preflight.parse_markers(result.text))


# ------------------------------------------------------------------------- preflight + setup


def pod_setup(ex: Executor, settings: dict, say: Say) -> dict:
    """Install what a fresh pod lacks (tmux, LLaMA-Factory with extras); record what was done."""
    remote_dir = settings.get("remote_dir", "lora-runs")
    cli = settings.get("llamafactory_cli", "llamafactory-cli")
    facts = preflight.parse_markers(ex.sh(preflight.probe_script(remote_dir, cli, False, True)).text)
    plan = preflight.setup_plan(facts, rsync=ex.kind == "ssh")
    record = {"at": now_iso(), "plan": plan, "installed": []}
    runnable = [step for step in plan if step.get("command")]
    if not runnable:
        say(f"setup: the pod has tmux{', rsync' if ex.kind == 'ssh' else ''} and LLaMA-Factory "
            "with its extras; nothing to install")
        return record
    say("setup: installing " + ", ".join(step["install"] for step in runnable) + " (this takes minutes)")
    result = ex.sh(preflight.setup_script(plan, remote_dir), timeout=3600)
    for value in preflight.parse_markers(result.text).get("step", []):
        number, _, rc = value.partition(" ")
        step = plan[int(number)]
        (record["installed"] if rc == "0" else record.setdefault("failed", [])).append(step["install"])
    if result.rc:
        raise PodError(f"setup failed on {ex.where()} for {', '.join(record.get('failed', []))}; "
                       f"see {remote_dir}/lora-pipeline-setup.log there")
    return record


def run_preflight(ex: Executor, settings: dict, files: RunFiles, say: Say) -> preflight.Report:
    """All checks in one connection; raises PodError (with every failure and its fix) or returns."""
    remote_dir = settings.get("remote_dir", "lora-runs")
    cli = settings.get("llamafactory_cli", "llamafactory-cli")
    try:
        result = ex.sh(preflight.probe_script(remote_dir, cli, bool(files.args.get("quantization_bit"))),
                       timeout=300)
    except Unreachable as exc:
        raise PodError(f"preflight failed; nothing was uploaded or launched: {exc}") from None
    facts = preflight.parse_markers(result.text)
    if "ok" not in facts:
        raise PodError(f"preflight failed on {ex.where()}: the login shell did not run the probe "
                       f"(exit {result.rc}): {result.err.strip()[-500:]}")
    report = preflight.evaluate(facts, files.args, ex.name, files.examples(),
                                needs_rsync=ex.kind == "ssh")
    for check in report.checks:
        say(f"preflight: {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    if report.failures:
        raise PodError(preflight.failure_message(report, ex.where()))
    return report


def upload(ex: Executor, files: RunFiles, run_dir: str, cli_path: str) -> None:
    """rsync the run's files into its folder, then check them against their sha256 there."""
    with tempfile.TemporaryDirectory(prefix="lora-upload-") as tmp:
        stage = Path(tmp)
        for key, rel in UPLOAD_LAYOUT.items():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage / rel).write_bytes(files.files[key].read_bytes())
        (stage / "run.sh").write_text(run_sh(cli_path, files.run_id))
        (stage / "run.json").write_text(json.dumps(
            {"run": files.run, "run_id": files.run_id, "input_sha256": files.digest,
             "inputs": files.sha256, "uploaded_at": now_iso()}, indent=2) + "\n")
        result = ex.sh(f"mkdir -p {shlex.quote(run_dir)}", timeout=120)
        if result.rc:
            raise PodError(f"cannot create {run_dir} on {ex.where()}: {result.err.strip()}")
        ex.put(stage, run_dir)
    remote = remote_hashes(ex, run_dir, list(UPLOAD_LAYOUT.values()))
    for rel in UPLOAD_LAYOUT.values():
        if remote.get(rel, (0, ""))[1] != files.sha256[rel]:
            raise PodError(f"upload of {rel} to {ex.where()} did not arrive intact (sha256 differs); "
                           "run again")


def remote_hashes(ex: Executor, run_dir: str, rel_paths: list[str]) -> dict[str, tuple[int, str]]:
    facts = preflight.parse_markers(ex.sh(hashes_script(run_dir, rel_paths), timeout=1800).text)
    out = {}
    for value in facts.get("file", []):
        size, digest, rel = value.split(" ", 2)
        out[rel] = (int(size), digest)
    return out


def launch(ex: Executor, settings: dict, files: RunFiles, state: RunState, say: Say) -> dict:
    """Setup (opt-in), preflight, upload, start detached. Returns what was launched."""
    record: dict = {}
    with stopped_as(BEFORE_LAUNCH):
        if settings.get("setup"):
            record["setup"] = pod_setup(ex, settings, say)
        report = run_preflight(ex, settings, files, say)
        run_dir = f"{report.remote_dir}/{files.run_id}"
        upload(ex, files, run_dir, report.cli_path)
    with stopped_as(LAUNCH_CUT):
        facts = preflight.parse_markers(ex.sh(launch_script(run_dir, files.session), timeout=120).text)
        if "busy" in facts:
            raise PodError(f"another launch of {files.run_id} is in progress on {ex.where()}; "
                           "run again in a minute to attach to it")
        if "already" in facts:
            pid, detach = preflight.first(facts, "already"), "attached"
            say(f"{files.run_id} is already running there (pid {pid}); attached, nothing launched")
        else:
            pid, detach = preflight.first(facts, "pid"), preflight.first(facts, "detach")
            if not pid:
                raise PodError(f"training did not start on {ex.where()}; see {run_dir}/train.log there")
            start = f"resuming from checkpoint-{state.checkpoint}" if state.checkpoint else "from step 0"
            say(f"launched {files.run_id} on {ex.where()} ({start}; pid {pid}, detached with {detach})")
            if detach == "tmux":
                say(f"watch it there: tmux -L {files.session} attach")
        record.update({
            "pid": pid, "detach": detach, "session": files.session if detach == "tmux" else None,
            "resumed_from": state.checkpoint, "launched_at": now_iso(), "preflight": report.as_dict(),
            "llamafactory_version": report.llamafactory_version, "remote_dir": report.remote_dir,
        })
        return record


def launch_record(files: RunFiles, ex: Executor, action: str, state: RunState,
                  attempt: dict | None = None, previous: dict | None = None) -> dict:
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
        "recorded_at": now_iso(),
    }


def submit(files: RunFiles, settings: dict, ex: Executor, say: Say) -> dict:
    """Launch the run, or attach to it when its folder on the pod already trains or has finished."""
    try:
        state = read_state(ex, settings.get("remote_dir", "lora-runs"), files.run_id)
    except Unreachable as exc:
        raise PodError(f"preflight failed; nothing was uploaded or launched: {exc}") from None
    if state.status in ("running", "finished"):
        say(f"{files.run_id} on {ex.where()} is {state.describe()}: attached, nothing launched")
        previous = read_remote_json(ex, f"{state.remote_dir}/{files.run_id}/launch.json")
        return launch_record(files, ex, "attached", state, previous.get("attempt"), previous)
    if state.status != "new":
        say(f"{files.run_id} on {ex.where()} is {state.describe()}: starting it again")
    attempt = launch(ex, settings, files, state, say)
    with stopped_as(LAUNCH_CUT):
        record = launch_record(files, ex, "resumed" if state.checkpoint else "launched", state, attempt)
        write_remote_json(ex, f"{record['run_dir']}/launch.json", record)
    return record


def read_remote_json(ex: Executor, path: str) -> dict:
    result = ex.sh(f"cat {shlex.quote(path)} 2>/dev/null", timeout=60)
    try:
        return json.loads(result.text) if result.rc == 0 and result.text.strip() else {}
    except json.JSONDecodeError:
        return {}


def write_remote_json(ex: Executor, path: str, data: dict) -> None:
    text = json.dumps(data, indent=2) + "\n"
    ex.sh(f"printf '%s' {shlex.quote(text)} > {shlex.quote(path)}.tmp && "
          f"mv {shlex.quote(path)}.tmp {shlex.quote(path)}", timeout=60)


# ----------------------------------------------------------------------------------- wait

# The guide's troubleshooting table, matched against the end of the remote log.
HINTS = [
    (r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED",
     "CUDA OOM: reduce per_device_train_batch_size to 1 and increase gradient_accumulation_steps "
     "(or lower cutoff_len / lora_rank) in runs.{run}.overrides; a changed train.yaml starts a new run"),
    (r"No module named '?bitsandbytes|bitsandbytes\S* is required|(Error|error).{0,80}bitsandbytes",
     "missing bitsandbytes: `pip install bitsandbytes>=0.39.0` on the pod, or set pods.{pod}.setup: true"),
    (r"Undefined dataset|Cannot open \S*dataset_info|File \S+ not found",
     "dataset not found: `dataset` must match a key in dataset_info.json. Both are generated from "
     "the run's name here, so the run folder on the pod is incomplete or was edited: delete "
     "results/{run}/train/launch.json and run again to upload it anew"),
]


def hint_for(log_tail: str, state: RunState, run: str, pod: str) -> str:
    for pattern, hint in HINTS:
        if re.search(pattern, log_tail):
            return hint.format(run=run, pod=pod)
    if state.status in ("killed", "died"):
        cause = ("the kernel's OOM killer (the pod ran out of RAM), a manual kill, or the pod stopping"
                 if state.rc in ("137", "") else "a signal")
        where = f"checkpoint-{state.checkpoint}" if state.checkpoint else "step 0 (no checkpoint was saved yet)"
        return f"the process was stopped from outside ({cause}); the next `snakemake` call resumes from {where}"
    return ("see the log above. Fix the config: a changed train.yaml or data starts a new run in a "
            "folder of its own. To retry this one unchanged (a download that failed, say), run "
            "snakemake with --forcerun submit_training")


def format_progress(entry: dict, loss: float | None, eval_loss: float | None, width: int = 24) -> str:
    step, total = entry.get("current_steps", 0), entry.get("total_steps", 0) or 1
    done = min(max(step / total, 0.0), 1.0)
    bar = "#" * round(done * width) + "-" * (width - round(done * width))
    parts = [f"step {step}/{total} [{bar}] {done * 100:5.1f}%"]
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if eval_loss is not None:
        parts.append(f"eval_loss {eval_loss:.4f}")
    if entry.get("elapsed_time"):
        parts.append(f"elapsed {entry['elapsed_time']}")
    if entry.get("remaining_time"):
        parts.append(f"remaining {entry['remaining_time']}")
    return "  ".join(parts)


class Follower:
    """Polls the run folder: mirrors train.log, shows progress from trainer_log.jsonl."""

    def __init__(self, ex: Executor, run_dir: str, mirror: Path, say: Say):
        self.ex, self.run_dir, self.say = ex, run_dir, say
        self.mirror = open(mirror, "wb")
        self.mirror_path = mirror
        self.log_offset = 0
        self.tlog_offset = 0
        self.tlog_rest = b""
        self.loss: float | None = None
        self.eval_loss: float | None = None
        self.last_step: int | None = None
        self.last_entry: dict | None = None

    def poll(self) -> tuple[RunState, bool]:
        """One round trip. Returns the state and whether a log chunk was capped (more to read)."""
        out = self.ex.sh(poll_script(self.run_dir, self.log_offset, self.tlog_offset), timeout=300).out
        header_end = out.find(b"\n@@chunk ")
        head = out[:header_end + 1] if header_end >= 0 else out
        state = parse_state(preflight.parse_markers(head.decode("utf-8", "replace")))
        state.remote_dir = state.remote_dir or self.run_dir.rsplit("/", 1)[0]
        if "@@no_run_dir" in head.decode("utf-8", "replace"):
            return state, False
        rest = out[header_end + 1:]
        capped = False
        for which in ("log", "tlog"):
            line_end = rest.find(b"\n")
            header = rest[:line_end].decode("ascii", "replace").split()
            if len(header) != 3 or header[0] != "@@chunk":
                break  # a log shrank between its size and its bytes: read it again next time
            off, n = int(header[1]), int(header[2])
            data = rest[line_end + 1:line_end + 1 + n]
            rest = rest[line_end + 1 + n:]
            capped |= n >= POLL_CAP
            if which == "log":
                self._mirror(off, data)
            else:
                self._trainer_log(off, data)
        return state, capped

    def _mirror(self, offset: int, data: bytes) -> None:
        if offset < self.log_offset:  # the log was replaced: mirror it anew
            self.mirror.seek(0)
            self.mirror.truncate()
        self.mirror.write(data)
        self.mirror.flush()
        self.log_offset = offset + len(data)

    def _trainer_log(self, offset: int, data: bytes) -> None:
        if offset < self.tlog_offset:
            self.tlog_rest = b""
        self.tlog_offset = offset + len(data)
        lines = (self.tlog_rest + data).split(b"\n")
        self.tlog_rest = lines.pop()
        newest = None
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("loss") is not None:
                self.loss = entry["loss"]
            if entry.get("eval_loss") is not None:
                self.eval_loss = entry["eval_loss"]
            newest = entry
        if newest is not None and (newest.get("current_steps") != self.last_step
                                   or newest.get("eval_loss") is not None):
            self.last_step = newest.get("current_steps")
            self.last_entry = newest
            self.say(format_progress(newest, self.loss, self.eval_loss))

    def tail(self, lines: int = 30) -> str:
        self.mirror.flush()
        text = self.mirror_path.read_bytes()[-200_000:].decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])


def with_reconnect(call, settings: dict, say: Say, what: str):
    """Run call(); through SSH failures retry with backoff until reconnect_minutes have passed."""
    limit = 60 * float(settings.get("reconnect_minutes", DEFAULT_RECONNECT_MINUTES))
    start, delay = time.monotonic(), 1.0
    while True:
        try:
            return call()
        except Unreachable as exc:
            waited = time.monotonic() - start
            if waited >= limit:
                raise PodError(f"{exc}\nno contact with the pod for {waited / 60:.0f} min while {what}; "
                               "if the pod is up, its training goes on: run snakemake again to re-attach") from None
            say(f"lost contact with the pod while {what} ({exc.short}); retrying in {delay:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 60.0)


def parse_attempts(text: str) -> list[dict]:
    attempts: list[dict] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "start":
            attempts.append({"start": int(parts[1]), "from_step": int(parts[2])})
        elif len(parts) == 3 and parts[0] == "end" and attempts and "end" not in attempts[-1]:
            attempts[-1].update(end=int(parts[1]), rc=int(parts[2]))
    return attempts


def wait(files: RunFiles, settings: dict, ex: Executor, launch_rec: dict, mirror: Path,
         say: Say) -> dict:
    """Follow the run to its end; resume it first if it died since the last call."""
    poll_seconds = float(settings.get("poll_seconds", DEFAULT_POLL_SECONDS))
    remote_dir = settings.get("remote_dir", "lora-runs")
    run_id = launch_rec["run_id"]
    if run_id != files.run_id:
        raise PodError(f"{launch_rec.get('run_id')} in the launch record is not the run of these inputs "
                       f"({files.run_id}); delete results/{files.run}/train/launch.json and run again")
    state = with_reconnect(lambda: read_state(ex, remote_dir, run_id), settings, say, "attaching")
    if state.status in ("new", "killed", "died"):
        if state.status == "new":
            say(f"{ex.where()} has no folder {run_id} (a new pod, or it was deleted): "
                "training starts again from step 0")
        else:
            say(f"{run_id} is {state.describe()}: resuming")
        attempt = launch(ex, settings, files, state, say)
        with stopped_as(LAUNCH_CUT):
            record = launch_record(files, ex, "resumed" if state.checkpoint else "launched",
                                   state, attempt, launch_rec)
            write_remote_json(ex, f"{record['run_dir']}/launch.json", record)
        run_dir = record["run_dir"]
    else:
        say(f"following {run_id} on {ex.where()}: {state.describe()}")
        run_dir = f"{state.remote_dir}/{run_id}"
    follower = Follower(ex, run_dir, mirror, say)
    while True:
        state, more = with_reconnect(follower.poll, settings, say, "following the training")
        if state.alive:
            if not more:
                time.sleep(poll_seconds)
            continue
        if more:
            continue
        break
    if state.status != "finished":
        tail = follower.tail()
        hint = hint_for(tail, state, files.run, ex.name)
        raise TrainingFailed(f"training of {run_id} on {ex.where()} ended without finishing: "
                             f"{state.describe()}\n--- end of the remote log ({mirror}) ---\n{tail}\n---\n"
                             f"hint: {hint}")
    attempts = parse_attempts(with_reconnect(
        lambda: ex.sh(f"cat {shlex.quote(run_dir)}/attempts.log", timeout=60).text,
        settings, say, "reading attempts.log"))
    entry = follower.last_entry or {}
    say(f"{run_id} finished: {format_progress(entry, follower.loss, follower.eval_loss)}" if entry
        else f"{run_id} finished")
    return {
        "run": files.run, "run_id": run_id, "status": "finished", "exit_code": 0,
        "run_dir": run_dir, "attempts": attempts,
        "wall_time_s": sum(a.get("end", a["start"]) - a["start"] for a in attempts),
        "total_steps": entry.get("total_steps"), "last_checkpoint": state.checkpoint,
        "finished_at": now_iso(),
    }


# ---------------------------------------------------------------------------------- fetch


def list_checkpoints(ex: Executor, run_dir: str) -> list[int]:
    script = cd_run(run_dir) + """for d in output/checkpoint-*; do
  [ -f "$d/trainer_state.json" ] && echo "@@checkpoint ${d##*-}"
done
"""
    facts = preflight.parse_markers(ex.sh(script, timeout=120).text)
    return sorted(int(v) for v in facts.get("checkpoint", []) if v.isdigit())


def download_verified(ex: Executor, run_dir: str, rel: str, dest: Path,
                      expected: tuple[int, str]) -> None:
    """Download one file, check its size and sha256 against the pod's; one retry on a mismatch."""
    for attempt in (1, 2):
        ex.get(f"{run_dir}/{rel}", dest)
        got = (dest.stat().st_size, sha256_file(dest))
        if got == expected:
            return
        dest.unlink(missing_ok=True)
    raise PodError(f"{rel} from {ex.where()} arrived damaged twice (size/sha256 {got} != {expected}); "
                   "run again")


def fetch(run: str, settings: dict, ex: Executor, launch_rec: dict, finished: dict,
          adapter_dir: Path, summary_path: Path, plot_path: Path, state_path: Path, say: Say) -> dict:
    """Choose the best checkpoint, download only its adapter and the logs, land them atomically."""
    if adapter_dir.exists() and (not adapter_dir.is_dir() or any(adapter_dir.iterdir())):
        raise PodError(f"{adapter_dir} already exists and is not empty; fetch never overwrites an "
                       "adapter: remove it (or move it away) and run again")
    remote_dir = settings.get("remote_dir", "lora-runs")
    run_id = launch_rec["run_id"]
    state = with_reconnect(lambda: read_state(ex, remote_dir, run_id), settings, say, "fetching")
    if not state.exists:
        raise PodError(f"{ex.where()} no longer has the run folder {run_id}; its checkpoints are gone. "
                       f"Delete results/{run}/train/ to train again")
    run_dir = f"{state.remote_dir}/{run_id}"
    steps = with_reconnect(lambda: list_checkpoints(ex, run_dir), settings, say, "listing checkpoints")
    if not steps:
        raise PodError(f"{run_id} saved no checkpoint-N on {ex.where()} (save_strategy: no?); "
                       "set save_steps in the profile")
    # The whole log_history: the final trainer_state.json, else the newest checkpoint's.
    history_rel = ("output/trainer_state.json" if state.final
                   else f"output/checkpoint-{steps[-1]}/trainer_state.json")
    adapter_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{adapter_dir.name}.", dir=adapter_dir.parent))
    try:
        final_state = stage / "final_trainer_state.json"
        hashes = with_reconnect(lambda: remote_hashes(ex, run_dir, [history_rel]), settings, say, "hashing")
        with_reconnect(lambda: download_verified(ex, run_dir, history_rel, final_state, hashes[history_rel]),
                       settings, say, "downloading trainer_state.json")
        history = json.loads(final_state.read_text(encoding="utf-8")).get("log_history", [])
        choice = best_checkpoint.select_checkpoint(history, steps)
        say(f"chosen: checkpoint-{choice.step} of {steps} by {choice.selected_by}"
            + (f" (eval_loss {choice.eval_loss:.4f})" if choice.eval_loss is not None else "")
            + (f"; {choice.note}" if choice.note else ""))
        source = f"output/checkpoint-{choice.step}"
        # Only the adapter and the logs: optimizer.pt, scheduler.pt and rng_state stay on the pod.
        wanted = {name: f"{source}/{name}" for name in best_checkpoint.ADAPTER_FILES}
        wanted["trainer_log.jsonl"] = "output/trainer_log.jsonl"
        hashes = with_reconnect(lambda: remote_hashes(ex, run_dir, list(wanted.values())), settings,
                                say, "hashing")
        missing = [rel for rel in wanted.values() if rel not in hashes]
        if missing:
            raise PodError(f"missing on {ex.where()} in {run_dir}: {', '.join(missing)}")
        for name, rel in wanted.items():
            with_reconnect(lambda: download_verified(ex, run_dir, rel, stage / name, hashes[rel]),
                           settings, say, f"downloading {name}")
            say(f"downloaded {name} ({hashes[rel][0]} bytes, sha256 {hashes[rel][1][:12]}... verified)")
        summary = {
            "run": run,
            "run_id": run_id,
            "best_step": choice.step,
            "best_eval_loss": choice.eval_loss,
            "selected_by": choice.selected_by,
            "total_steps": max([int(e.get("step", 0)) for e in history] + [steps[-1]]),
            "wall_time_s": finished.get("wall_time_s"),
            "llamafactory_version": launch_rec.get("llamafactory_version"),
            "sha256": {name: hashes[rel][1] for name, rel in wanted.items()},
        }
        text = json.dumps(summary, indent=2) + "\n"
        (stage / "training_summary.json").write_text(text)
        state_bytes = final_state.read_bytes()
        final_state.unlink()
        umask = os.umask(0)
        os.umask(umask)
        stage.chmod(0o777 & ~umask)  # mkdtemp made it private
        try:
            os.replace(stage, adapter_dir)  # atomic: the adapter folder appears complete or not at all
        except OSError as exc:
            raise PodError(f"cannot move the downloaded adapter into {adapter_dir}: {exc.strerror}; "
                           "remove it (or move it away) and run again") from None
        # Only once the adapter is in place: a failed fetch leaves no summary of an absent adapter.
        with stopped_as(f"stopped after {adapter_dir} landed, before the run's summary, plot and "
                        "trainer state were written. Run snakemake again: it fetches again (by "
                        f"hand: remove {adapter_dir} first)"):
            write_atomic(summary_path, text.encode())
            write_atomic(plot_path, best_checkpoint.loss_svg(history, choice, f"{run_id}: loss").encode())
            write_atomic(state_path, state_bytes)
        return summary
    finally:
        if stage.exists():
            shutil.rmtree(stage)


# ------------------------------------------------------------------------------------- CLI


def _add_files(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True)
    parser.add_argument("--pod-settings", required=True,
                        help="the run's pods: entry (with its name) as JSON, or a file holding it")
    parser.add_argument("--train-yaml", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--dataset-info", required=True)


def _write_json(path: str, data: dict) -> None:
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def _stop_on_signals() -> None:
    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("preflight", help="check the pod for this run; launch nothing")
    _add_files(p)
    p.add_argument("--output", help="write the report here")
    p.add_argument("--log")
    p = sub.add_parser("submit", help="launch the training, or attach to it")
    _add_files(p)
    p.add_argument("--output", required=True, help="the launch record to write")
    p.add_argument("--log")
    p = sub.add_parser("wait", help="follow the training to its end (resume it if it died)")
    _add_files(p)
    p.add_argument("--launch", required=True)
    p.add_argument("--output", required=True, help="the finish record to write")
    p.add_argument("--remote-log", required=True, help="mirror of the remote train.log")
    p.add_argument("--log")
    p = sub.add_parser("fetch", help="download the best checkpoint's adapter")
    p.add_argument("--run", required=True)
    p.add_argument("--pod-settings", required=True)
    p.add_argument("--launch", required=True)
    p.add_argument("--finished", required=True)
    p.add_argument("--adapter-dir", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--plot", required=True)
    p.add_argument("--trainer-state", required=True)
    p.add_argument("--log")
    args = parser.parse_args(argv)

    say = Say(args.run, args.log)
    _stop_on_signals()  # SIGTERM and SIGHUP end it as Ctrl-C does: cleaned up, with a message
    try:
        settings = load_settings(args.pod_settings)
        ex = make_executor(settings)
        if args.command == "fetch":
            summary = fetch(args.run, settings, ex, json.loads(Path(args.launch).read_text()),
                            json.loads(Path(args.finished).read_text()), Path(args.adapter_dir),
                            Path(args.summary), Path(args.plot), Path(args.trainer_state), say)
            say(f"{args.adapter_dir}: checkpoint-{summary['best_step']} of {summary['total_steps']} steps")
            return 0
        files = RunFiles.load(args.run, args.train_yaml, args.data, args.dataset_info)
        if args.command == "preflight":
            report = run_preflight(ex, settings, files, say)
            say(f"preflight passed on {ex.where()}")
            if args.output:
                _write_json(args.output, report.as_dict())
        elif args.command == "submit":
            _write_json(args.output, submit(files, settings, ex, say))
        elif args.command == "wait":
            launch_rec = json.loads(Path(args.launch).read_text())
            _write_json(args.output, wait(files, settings, ex, launch_rec, Path(args.remote_log), say))
    except KeyboardInterrupt as exc:
        say(str(exc) if isinstance(exc, Stopped) else STOPPED[args.command])
        return 130
    except PodError as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
