"""Remote training through a real sshd with real LLaMA-Factory: submit -> wait -> fetch.

The pod is Debian's sshd on 127.0.0.1 (tests/sshd.py); training is `llamafactory-cli train` of the
pod environment on the tiny random Qwen2, all driven by `snakemake` on a config in tmp_path.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lora_style.training.executor import SSHExecutor
from lora_style.training.messages import PodError
from lora_style.training.settings import PodSettings

from helpers.sshd import style_run_config
from helpers.workflow import LLAMAFACTORY_CLI, SAMPLE_DATA, snakemake, snakemake_argv

pytestmark = [pytest.mark.slow, pytest.mark.pod]

ADAPTER = "lora_adapters/style_peft"
ADAPTER_FILES = {
    "adapter_model.safetensors",
    "adapter_config.json",
    "trainer_state.json",
    "trainer_log.jsonl",
    "training_summary.json",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def started_trainings(run_dir: Path) -> int:
    """How many times LLaMA-Factory's Trainer started in this run folder (its own log line)."""
    return (run_dir / "train.log").read_text().count("***** Running training *****")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sshd, tiny_model):
    """One full submit -> wait -> fetch run, shared by the tests that only read its results."""
    tmp = tmp_path_factory.mktemp("full")
    config = style_run_config(tmp, sshd.pod(tmp, LLAMAFACTORY_CLI), tiny_model, reference=True, max_steps=20)
    work = tmp / "work"
    proc = snakemake(work, ADAPTER, "results/style/train/loss.svg", configfile=config)
    launch = json.loads((work / "results/style/train/launch.json").read_text())
    return {
        "tmp": tmp,
        "work": work,
        "config": config,
        "proc": proc,
        "launch": launch,
        "run_dir": tmp / "pod" / launch["run_id"],
    }


def test_full_run_produces_a_peft_adapter_that_differs_from_the_base(trained, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = trained["work"] / ADAPTER
    assert {p.name for p in adapter.iterdir() if not p.name.startswith(".")} == ADAPTER_FILES
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    ids = torch.tensor([[1, 5, 9, 42, 7, 3, 100, 11]])
    with torch.no_grad():
        before = base(ids).logits
        model = PeftModel.from_pretrained(base, str(adapter)).eval()
        after = model(ids).logits
    assert any("lora_B" in name for name, _ in model.named_parameters())
    assert (after - before).abs().max().item() > 1e-4

    summary = json.loads((adapter / "training_summary.json").read_text())
    assert summary["run"] == "style" and summary["run_id"] == trained["launch"]["run_id"]
    assert summary["total_steps"] == 20 and summary["llamafactory_version"] == "0.9.5"
    assert summary["selected_by"] == "min_eval_loss"
    # The choice is the minimum over the checkpoints the pod saved (every 5 steps).
    state = json.loads((trained["run_dir"] / "output/trainer_state.json").read_text())
    evals = {e["step"]: e["eval_loss"] for e in state["log_history"] if "eval_loss" in e}
    assert summary["best_step"] == min((5, 10, 15, 20), key=lambda s: (evals[s], s))
    assert summary["best_eval_loss"] == evals[summary["best_step"]]
    assert summary["wall_time_s"] > 0
    assert (trained["work"] / "results/style/train/loss.svg").read_text().startswith("<svg")
    assert "step 20/20" in (trained["work"] / "logs/style/wait_training.log").read_text()
    # The remote log is mirrored locally, byte for byte.
    assert (trained["work"] / "logs/style/train_remote.log").read_bytes() == (
        trained["run_dir"] / "train.log"
    ).read_bytes()


def test_the_chosen_checkpoint_is_evaluated_on_the_pod_over_ssh(trained):
    """fetch runs eval.sh on the pod (LLaMA-Factory's own evaluation of the chosen checkpoint on
    the held-out examples) and records its eval_loss; its results stay in the run folder."""
    work, run_dir = trained["work"], trained["run_dir"]
    reference = json.loads((work / "results/style/train/reference_eval.json").read_text())
    summary = json.loads((work / "results/style/train/training_summary.json").read_text())
    held_out = (work / "results/style/data/eval.jsonl").read_text().splitlines()
    assert reference["checkpoint"] == summary["best_step"] and reference["examples"] == len(held_out)
    assert reference["eval_loss"] > 0.1
    saved = json.loads(
        (run_dir / f"reference_eval/checkpoint-{summary['best_step']}/all_results.json").read_text()
    )
    assert saved["eval_loss"] == reference["eval_loss"]
    assert "do_train=false" in reference["how"]


def test_fetched_files_match_the_pods_sha256_and_no_optimizer_state(trained):
    adapter = trained["work"] / ADAPTER
    summary = json.loads((adapter / "training_summary.json").read_text())
    chosen = trained["run_dir"] / "output" / f"checkpoint-{summary['best_step']}"
    on_pod = {
        name: chosen / name
        for name in ("adapter_model.safetensors", "adapter_config.json", "trainer_state.json")
    }
    on_pod["trainer_log.jsonl"] = trained["run_dir"] / "output" / "trainer_log.jsonl"
    for name, remote in on_pod.items():
        assert sha256(adapter / name) == sha256(remote) == summary["sha256"][name], name
    # The optimizer state exists on the pod and stayed there.
    assert (chosen / "optimizer.pt").is_file()
    local = [p.name for p in trained["work"].rglob("*") if p.is_file()]
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        assert name not in local


def test_a_rerun_is_a_noop_and_a_new_pod_address_retrains_nothing(trained, sshd, tiny_model):
    work, tmp = trained["work"], trained["tmp"]
    launch = work / "results/style/train/launch.json"
    before = launch.stat().st_mtime_ns
    assert "Nothing to be done" in snakemake(work, ADAPTER, configfile=trained["config"]).stderr
    assert "Nothing to be done" in snakemake(work, ADAPTER, "-n", configfile=trained["config"]).stdout
    # The pod moved (a new port, here one nobody listens on): the trained run stays as it is, and
    # no SSH connection is needed to know that.
    (tmp / "moved").mkdir()
    moved = style_run_config(
        tmp / "moved", sshd.pod(tmp, LLAMAFACTORY_CLI, port=1), tiny_model, reference=True, max_steps=20
    )
    assert "Nothing to be done" in snakemake(work, ADAPTER, configfile=moved).stderr
    assert launch.stat().st_mtime_ns == before


def test_an_edit_to_the_executor_code_retrains_nothing(trained):
    """Scripts are not inputs of the training rules: editing them (in a copy of the checkout,
    which also shows that a moved checkout retrains nothing) plans no job."""
    from helpers.workflow import REPO

    copy = trained["tmp"] / "checkout"
    for part in ("rules", "src", "scripts", "config"):
        shutil.copytree(REPO / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("Snakefile", "environment.yml"):
        shutil.copy2(REPO / part, copy / part)
    training = copy / "src" / "lora_style" / "training"
    for script in (
        training / "remote_train.py",
        training / "executor.py",
        training / "preflight.py",
        training / "best_checkpoint.py",
        copy / "scripts" / "remote_train.py",
    ):
        assert script.is_file(), script
        with open(script, "a") as handle:
            handle.write("\n# an edit that changes no output\n")
    proc = subprocess.run(
        snakemake_argv(
            trained["work"],
            "-n",
            "--",
            ADAPTER,
            configfile=trained["config"],
            snakefile=copy / "Snakefile",
            cores=1,
        ),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]


def test_resubmitting_the_same_inputs_attaches_instead_of_training_again(trained):
    work = trained["work"]
    proc = snakemake(work, ADAPTER, "--forcerun", "submit_training", configfile=trained["config"])
    assert "is finished: attached, nothing launched" in proc.stderr
    assert started_trainings(trained["run_dir"]) == 1
    assert json.loads((work / "results/style/train/launch.json").read_text())["action"] == "attached"
    assert (work / ADAPTER / "adapter_model.safetensors").is_file()


# ------------------------------------------------------------------------- preflight failures


@pytest.fixture(scope="module")
def preflight_work(tmp_path_factory, sshd, tiny_model):
    """A workdir whose data stage is built, to try broken pods on."""
    tmp = tmp_path_factory.mktemp("preflight")
    config = style_run_config(tmp, sshd.pod(tmp, LLAMAFACTORY_CLI), tiny_model)
    snakemake(
        tmp / "work",
        "results/style/llamafactory/train.yaml",
        "results/style/data/train.jsonl",
        "results/style/llamafactory/dataset_info.json",
        configfile=config,
    )
    return tmp


def _unreachable(sshd, tmp):
    from helpers.sshd import free_port

    return sshd.pod(tmp, LLAMAFACTORY_CLI, port=free_port()), {}


def _wrong_key(sshd, tmp):
    return sshd.pod(tmp, LLAMAFACTORY_CLI, identity_file=str(sshd.other_key)), {}


def _missing_cli(sshd, tmp):
    return sshd.pod(tmp, "/opt/nowhere/bin/llamafactory-cli"), {}


def _bf16_and_deepspeed_on_this_cpu(sshd, tmp):
    # Two failures, both named in the one message. (DeepSpeed missing: LLaMA-Factory itself
    # would find out only in training.)
    return sshd.pod(tmp, LLAMAFACTORY_CLI), {"bf16": True, "deepspeed": "ds_z2"}


def _changed_host_key(sshd, tmp):
    known = tmp / "changed_known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {(sshd.other_key.with_suffix('.pub')).read_text()}")
    return sshd.pod(tmp, LLAMAFACTORY_CLI, known_hosts=str(known)), {}


@pytest.mark.parametrize(
    "broken,message",
    [
        (_unreachable, "the pod does not answer"),
        (_wrong_key, "the pod refused the key"),
        (_missing_cli, "llamafactory-cli: not found on the pod"),
        (_changed_host_key, "host key is not the one remembered"),
        (
            _bf16_and_deepspeed_on_this_cpu,
            (
                "no NVIDIA GPU (nvidia-smi not found), but the profile sets bf16: True",
                "deepspeed: does not import (ModuleNotFoundError: No module named "
                "'deepspeed'), but deepspeed: deepspeed/ds_z2.json needs deepspeed>=",
            ),
        ),
    ],
)
def test_preflight_failures_launch_nothing(preflight_work, sshd, tiny_model, broken, message):
    pod, overrides = broken(sshd, preflight_work)
    fails_preflight(preflight_work, pod, tiny_model, overrides, message)


def fails_preflight(tmp, pod: dict, tiny_model, overrides: dict, message: str | tuple[str, ...]) -> None:
    config = style_run_config(tmp, pod, tiny_model, **overrides)
    proc = snakemake(tmp / "work", "results/style/train/launch.json", configfile=config, check=False)
    assert proc.returncode != 0
    for each in (message,) if isinstance(message, str) else message:
        assert each in proc.stderr, proc.stderr[-3000:]
    assert "nothing was uploaded or launched" in proc.stderr
    assert not (tmp / "work/results/style/train/launch.json").exists()
    pod_dir = tmp / "pod"
    assert not pod_dir.exists() or not any(pod_dir.iterdir()), list(pod_dir.iterdir())


def test_a_pod_shell_that_prints_before_every_command_fails_preflight(preflight_work, sshd, tiny_model):
    """bash reads ~/.bashrc for every command sshd runs; one that echoes breaks rsync's protocol
    (which runs over that command's stdout) once the upload starts. Preflight names it first."""
    bashrc = sshd.home / ".bashrc"
    bashrc.write_text('echo "Welcome to your pod"\n')
    try:
        pod = sshd.pod(preflight_work, LLAMAFACTORY_CLI)
        # Why it is a check: the executor's own upload (rsync) through this shell fails, in
        # rsync's words.
        upload = preflight_work / "upload"
        upload.mkdir(exist_ok=True)
        shutil.copy(SAMPLE_DATA, upload)
        ex = SSHExecutor(PodSettings.from_entry({**pod, "name": "testpod"}), preflight_work)
        try:
            with pytest.raises(PodError, match=r"is your shell clean\?"):
                ex.put(upload, str(preflight_work / "rsync-copy"))
        finally:
            ex.close()
        fails_preflight(
            preflight_work,
            pod,
            tiny_model,
            {},
            ("quiet shell: the pod's shell prints 'Welcome to your pod' before every command", "~/.bashrc"),
        )
    finally:
        bashrc.unlink()
