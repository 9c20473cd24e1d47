"""Download the best checkpoint's adapter: chosen by eval_loss (best_checkpoint.py), only its
adapter files and the logs (never optimizer or scheduler state), each checked against the pod's
sha256, landed as one folder that appears complete or not at all."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from lora_style.fileio import land, sha256_file, staged_dir, write_atomic
from lora_style.training import best_checkpoint, results

from .executor import Executor
from .messages import PodError, Say, stopped_after_landing, stopped_as
from .reconnect import with_reconnect
from .run_state import holding, list_checkpoints, read_remote_json, read_state, remote_hashes
from .settings import PodSettings
from .shell import first

# The reference evaluation's limit on the pod: model load and a forward pass per example.
REFERENCE_TIMEOUT = 3600


def reference_eval(
    ex: Executor, settings: PodSettings, launch_rec: dict, run_dir: str, step: int, examples: int, say: Say
) -> dict:
    """LLaMA-Factory's own evaluation of checkpoint-STEP on the first `examples` held-out
    examples, on the pod while it is there (eval.sh): the loss the Mac bundle is measured against
    (mlx/fidelity.py). Its record says why when there is none; a failure costs the run nothing."""
    if examples <= 0:
        return {"skipped": "turned off (fidelity.reference: false)"}
    if "data/eval.jsonl" not in (launch_rec.get("inputs") or {}):
        return {"skipped": "the run holds out no examples (val_size 0)"}
    if ex.kind == "slurm":
        return {"skipped": "not on a Slurm cluster (it would run on the login node)"}
    attempt = launch_rec.get("attempt") or {}
    cli = (attempt.get("preflight") or {}).get("llamafactory_cli") or settings.llamafactory_cli
    say(f"reference evaluation of checkpoint-{step} on up to {examples} held-out examples (LLaMA-Factory)")
    started = time.monotonic()
    result = ex.run("eval.sh", run_dir, cli, step, examples, timeout=REFERENCE_TIMEOUT)
    seconds = round(time.monotonic() - started, 1)
    path = first(result.facts, "results")
    if not path:
        tail = [line for line in result.text.strip().splitlines() if not line.startswith("@@")][-5:]
        say(
            f"the reference evaluation failed ({first(result.facts, 'failed', str(result.rc))}); "
            f"see {run_dir}/reference_eval.log there. The bundle is still measured on this machine"
            + ("\n  " + "\n  ".join(tail) if tail else "")
        )
        return {"skipped": f"LLaMA-Factory's evaluation failed; see {run_dir}/reference_eval.log"}
    results = read_remote_json(ex, f"{run_dir}/{path}")
    if "eval_loss" not in results:
        return {"skipped": f"{run_dir}/{path} has no eval_loss"}
    say(f"reference eval_loss {results['eval_loss']:.4f} ({seconds:.0f} s on {ex.where()})")
    return {
        "eval_loss": results["eval_loss"],
        "checkpoint": step,
        "examples_asked": examples,
        "examples": round(results.get("eval_samples_per_second", 0) * results.get("eval_runtime", 0)) or None,
        "eval_runtime_s": results.get("eval_runtime"),
        "wall_time_s": seconds,
        "how": "llamafactory-cli train train.yaml do_train=false do_eval=true "
        "adapter_name_or_path=output/checkpoint-N packing=false per_device_eval_batch_size=1 "
        "max_samples=EXAMPLES (eval.sh)",
    }


def download_verified(
    ex: Executor, run_dir: str, rel: str, dest: Path, expected: tuple[int, str], say: Say | None = None
) -> None:
    """Download one file, check its size and sha256 against the pod's; one retry on a mismatch.
    A long download reports its progress through `say`."""
    for _ in (1, 2):
        ex.get(f"{run_dir}/{rel}", dest, say=say)
        got = (dest.stat().st_size, sha256_file(dest))
        if got == expected:
            return
        dest.unlink(missing_ok=True)
    raise PodError(
        f"{rel} from {ex.where()} arrived damaged twice (size/sha256 {got} != {expected}); run again"
    )


def remove_leftovers(adapter_dir: Path, say: Say) -> None:
    """A fetch killed outright (SIGKILL, a power cut) cannot clean up: its hidden staging folder
    (fileio.staged_dir) stays beside the adapter, never taken for it, and is removed here. No
    other fetch of the run can be using it: Snakemake locks the project's outputs."""
    for old in adapter_dir.parent.glob(f".{adapter_dir.name}.*.partial"):
        say(f"removing {old}, left by a download that was cut off")
        shutil.rmtree(old, ignore_errors=True)


def fetch(
    run: str,
    settings: PodSettings,
    ex: Executor,
    launch_rec: dict,
    finished: dict,
    adapter_dir: Path,
    summary_path: Path,
    state_path: Path,
    say: Say,
    reference_examples: int = 0,
    reference_path: Path | None = None,
) -> dict:
    """Choose the best checkpoint, download only its adapter and the logs, land them atomically.
    With `reference_path`, the chosen checkpoint's reference evaluation on the pod (the first
    `reference_examples` held-out examples; 0: none) is recorded there."""
    if adapter_dir.exists() and (not adapter_dir.is_dir() or any(adapter_dir.iterdir())):
        raise PodError(
            f"{adapter_dir} already exists and is not empty; fetch never overwrites an "
            "adapter: remove it (or move it away) and run again"
        )
    remove_leftovers(adapter_dir, say)
    run_id = launch_rec["run_id"]
    state = with_reconnect(lambda: read_state(ex, settings.remote_dir, run_id), settings, say, "fetching")
    if not state.exists:
        raise PodError(
            f"{ex.where()} no longer has the run folder {run_id}; its checkpoints are gone. "
            f"Delete results/{run}/train/ to train again"
        )
    run_dir = f"{state.remote_dir}/{run_id}"
    with holding(ex, state.remote_dir):  # the pod's guard does not stop it mid-download
        steps = with_reconnect(lambda: list_checkpoints(ex, run_dir), settings, say, "listing checkpoints")
        if not steps:
            raise PodError(
                f"{run_id} saved no checkpoint-N on {ex.where()} (save_strategy: no?); "
                "set save_steps in the profile"
            )
        # The whole log_history: the final trainer_state.json, else the newest checkpoint's.
        history_rel = (
            "output/trainer_state.json"
            if state.final
            else f"output/checkpoint-{steps[-1]}/trainer_state.json"
        )
        with staged_dir(adapter_dir) as stage:
            stage.mkdir()
            final_state = stage / "final_trainer_state.json"
            hashes = with_reconnect(
                lambda: remote_hashes(ex, run_dir, [history_rel]), settings, say, "hashing"
            )
            with_reconnect(
                lambda: download_verified(ex, run_dir, history_rel, final_state, hashes[history_rel]),
                settings,
                say,
                "downloading trainer_state.json",
            )
            history = json.loads(final_state.read_text(encoding="utf-8")).get("log_history", [])
            choice = best_checkpoint.select_checkpoint(history, steps)
            say(
                f"chosen: checkpoint-{choice.step} of {steps} by {choice.selected_by}"
                + (f" (eval_loss {choice.eval_loss:.4f})" if choice.eval_loss is not None else "")
                + (f"; {choice.note}" if choice.note else "")
            )
            source = f"output/checkpoint-{choice.step}"
            # Only the adapter and the logs: optimizer.pt, scheduler.pt and rng_state stay on the pod.
            wanted = {name: f"{source}/{name}" for name in best_checkpoint.ADAPTER_FILES}
            wanted["trainer_log.jsonl"] = "output/trainer_log.jsonl"
            hashes = with_reconnect(
                lambda: remote_hashes(ex, run_dir, list(wanted.values())), settings, say, "hashing"
            )
            missing = [rel for rel in wanted.values() if rel not in hashes]
            if missing:
                raise PodError(f"missing on {ex.where()} in {run_dir}: {', '.join(missing)}")
            for name, rel in wanted.items():
                with_reconnect(
                    lambda rel=rel, name=name: download_verified(
                        ex, run_dir, rel, stage / name, hashes[rel], say
                    ),
                    settings,
                    say,
                    f"downloading {name}",
                )
                say(f"downloaded {name} ({hashes[rel][0]} bytes, sha256 {hashes[rel][1][:12]}... verified)")
            reference = (
                reference_eval(ex, settings, launch_rec, run_dir, choice.step, reference_examples, say)
                if reference_path is not None
                else None
            )
            trained = max([int(e.get("step", 0)) for e in history] + [steps[-1]])
            planned = launch_rec.get("estimate") or {}
            table = results.results_table(history, finished.get("gpu_time"), trained)
            summary = {
                "run": run,
                "run_id": run_id,
                "best_step": choice.step,
                "best_eval_loss": choice.eval_loss,
                "selected_by": choice.selected_by,
                "total_steps": trained,
                "wall_time_s": finished.get("wall_time_s"),
                "gpu_time": finished.get("gpu_time"),  # what the training used, all attempts
                "estimate": launch_rec.get("estimate"),  # what the plan said it would
                "cut_by_budget": bool(finished.get("cut_by_budget")),
                "llamafactory_version": launch_rec.get("llamafactory_version"),
                "sha256": {name: hashes[rel][1] for name, rel in wanted.items()},
                "max_steps": planned.get("steps"),
                "early_stopping_patience": planned.get("patience"),
                "stopped_early": bool(finished.get("stopped_early")),
                # Counted by transformers when the run sets include_num_input_tokens_seen.
                "tokens_seen": max([int(e.get("num_input_tokens_seen") or 0) for e in history] + [0]) or None,
                # The guide's results table: one row per evaluation (training/results.py).
                "results_table": table,
                "advice": results.advice(
                    table,
                    trained,
                    planned.get("steps"),
                    planned.get("patience"),
                    bool(finished.get("cut_by_budget")),
                ),
            }
            text = json.dumps(summary, indent=2) + "\n"
            (stage / "training_summary.json").write_text(text)
            state_bytes = final_state.read_bytes()
            final_state.unlink()
            try:
                land(stage, adapter_dir)  # the adapter folder appears complete or not at all
            except OSError as exc:
                raise PodError(
                    f"cannot move the downloaded adapter into {adapter_dir}: {exc.strerror}; "
                    "remove it (or move it away) and run again"
                ) from None
        # Only once the adapter is in place: a failed fetch leaves no summary of an absent adapter.
        with stopped_as(stopped_after_landing(adapter_dir)):
            write_atomic(summary_path, text.encode())
            write_atomic(state_path, state_bytes)
            if reference_path is not None:
                write_atomic(reference_path, (json.dumps(reference, indent=2) + "\n").encode())
        return summary
