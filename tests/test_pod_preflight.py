"""Preflight's checks on recorded pod facts, the real probe here, and the opt-in setup (scripts/pod/preflight.py)."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest
import yaml

from helpers.workflow import LLAMAFACTORY_CLI, REPO
from pod import preflight, shell
from pod.executor import LocalExecutor

PROFILES = REPO / "config" / "profiles"

# -------------------------------------------------------------------------- preflight checks

FACTS_OK = {"ok": [""], "cli": ["/opt/lf/bin/llamafactory-cli"], "cli_rc": ["0"], "version": ["0.9.5"],
            "dir": ["/workspace/lora-runs"], "disk_free_kb": [str(500 * 10**6)], "tmux": ["tmux 3.3a"]}


def _guide_args():
    args = yaml.safe_load((PROFILES / "qwen25_32b_a100.yaml").read_text())
    return {**args, "model_name_or_path": "Qwen/Qwen2.5-32B"}


def test_preflight_a100_80gb_passes_the_guides_profile():
    facts = {**FACTS_OK, "nvidia_smi_rc": ["0"], "gpu": ["0, NVIDIA A100-SXM4-80GB, 81920, 81000"],
             "bnb_rc": ["0"], "bnb": ["0.45.0"]}
    report = preflight.evaluate(facts, _guide_args(), "runpod", 8840)
    assert not report.failures, report.failures
    assert report.detach == "tmux"


def test_preflight_a_40gb_gpu_fails_with_the_guides_advice():
    facts = {**FACTS_OK, "nvidia_smi_rc": ["0"], "gpu": ["0, NVIDIA A100-PCIE-40GB, 40960, 40000"],
             "bnb_rc": ["0"], "bnb": ["0.45.0"]}
    report = preflight.evaluate(facts, _guide_args(), "runpod", 8840)
    (failure,) = report.failures
    assert failure.name == "GPU memory" and "~71 GB" in failure.detail
    assert "lora_rank" in failure.fix and "qwen25_14b" in failure.fix


def test_preflight_cpu_pod_passes_tiny_but_not_a_quantised_profile():
    tiny = yaml.safe_load((PROFILES / "tiny_cpu.yaml").read_text())
    report = preflight.evaluate(FACTS_OK, tiny, "local", 40)
    assert not report.failures
    assert "CPU training" in report.checks[1].detail
    report = preflight.evaluate(FACTS_OK, _guide_args(), "runpod", 8840)
    names = {c.name: c for c in report.failures}
    assert "quantization_bit: 4" in names["GPU"].detail and "bf16: True" in names["GPU"].detail
    assert "bitsandbytes" in names and "pip install bitsandbytes>=0.39.0" in names["bitsandbytes"].fix


def test_preflight_small_disk_fails():
    facts = {**FACTS_OK, "nvidia_smi_rc": ["0"], "gpu": ["0, H100, 81559, 80000"], "bnb_rc": ["0"],
             "disk_free_kb": [str(10 * 10**6)]}
    (failure,) = preflight.evaluate(facts, _guide_args(), "runpod", 8840).failures
    assert failure.name == "disk" and "save_steps" in failure.fix


def test_preflight_over_ssh_needs_rsync_on_the_pod():
    tiny = yaml.safe_load((PROFILES / "tiny_cpu.yaml").read_text())
    (failure,) = preflight.evaluate(FACTS_OK, tiny, "runpod", 40, needs_rsync=True).failures
    assert failure.name == "rsync" and "not found on the pod" in failure.detail
    assert failure.fix == "apt-get install -y rsync on the pod, or set pods.runpod.setup: true"
    report = preflight.evaluate({**FACTS_OK, "rsync": [""]}, tiny, "runpod", 40, needs_rsync=True)
    assert not report.failures and report.checks[-1].name == "rsync"
    # The local executor copies files itself: no rsync check.
    assert "rsync" not in [c.name for c in preflight.evaluate(FACTS_OK, tiny, "local", 40).checks]


@pytest.mark.pod
def test_probe_runs_here_and_finds_the_pod_environment(tmp_path):
    """The real probe script through the local executor: this machine's facts."""
    ex = LocalExecutor({"name": "here", "executor": "local"}, tmp_path)
    facts = preflight.probe(ex, "runs dir", str(LLAMAFACTORY_CLI), check_bnb=False).facts
    assert facts["cli"] == [str(LLAMAFACTORY_CLI)]
    assert facts["cli_rc"] == ["0"] and facts["version"] == ["0.9.5"]
    assert facts["dir"] == [str((tmp_path / "runs dir").resolve())]
    assert int(facts["disk_free_kb"][0]) > 0
    assert ("rsync" in facts) == (shutil.which("rsync") is not None)


# -------------------------------------------------------------------------------------- setup

def test_setup_plan_installs_what_a_fresh_pod_lacks_the_guides_way():
    fresh = {"ok": [""], "apt_get": [""], "template_dir": [""], "python": ["/usr/bin/python3"],
             "cli": ["/usr/local/bin/llamafactory-cli"], "missing_modules": ["nltk jieba bitsandbytes"]}
    plan = preflight.setup_plan(fresh)
    assert [step["install"] for step in plan] == ["tmux", "llamafactory[metrics,bitsandbytes,qwen]"]
    assert "apt-get install -y -qq tmux" in plan[0]["command"]
    assert shlex.split(plan[1]["command"]) == [
        "/usr/bin/python3", "-m", "pip", "install", "-q", "-e",
        "/workspace/LLaMA-Factory[metrics,bitsandbytes,qwen]"]
    # Without the template's checkout: the wheel has no extras, so their packages by name.
    plan = preflight.setup_plan({"ok": [""], "tmux": ["tmux 3.3a"], "python": ["/usr/bin/env python3"]})
    (step,) = plan
    assert shlex.split(step["command"])[:5] == ["/usr/bin/env", "python3", "-m", "pip", "install"]
    assert "llamafactory==0.9.5" in step["command"] and "bitsandbytes>=0.39.0" in step["command"]


def test_setup_for_the_ssh_executor_installs_rsync_with_tmux():
    fresh = {"ok": [""], "apt_get": [""], "cli": ["/x/llamafactory-cli"], "python": ["/x/python"],
             "missing_modules": [""]}
    (step,) = preflight.setup_plan(fresh, rsync=True)
    assert step["install"] == "tmux rsync"
    assert step["command"].endswith("apt-get install -y -qq tmux rsync")
    (step,) = preflight.setup_plan({**fresh, "tmux": ["tmux 3.3a"]}, rsync=True)
    assert step["install"] == "rsync" and step["command"].endswith("apt-get install -y -qq rsync")
    assert preflight.setup_plan({**fresh, "tmux": ["tmux 3.3a"], "rsync": [""]}, rsync=True) == []
    # No apt-get: nothing to run, but the plan says what to install by hand.
    plan = preflight.setup_plan({"ok": [""], "cli": ["/x/llamafactory-cli"], "missing_modules": [""]},
                                rsync=True)
    assert [(s["install"], s["command"]) for s in plan] == [("tmux", None), ("rsync", None)]
    assert "install rsync on the pod by hand" in plan[1]["note"]


def test_setup_is_idempotent_a_ready_pod_needs_nothing():
    ready = {"ok": [""], "tmux": ["tmux 3.3a"], "apt_get": [""], "cli": ["/x/llamafactory-cli"],
             "python": ["/x/python"], "missing_modules": [""]}
    assert preflight.setup_plan(ready) == []


def test_setup_script_runs_logs_and_records(tmp_path):
    """The generated script, run for real with harmless commands, logs each step and its status."""
    plan = [{"install": "tmux", "command": "echo installing tmux"},
            {"install": "llamafactory", "command": "echo 'quoted; $HOME' && false"},
            {"install": "nothing", "command": None}]
    proc = subprocess.run(shell.argv("setup.sh", *preflight.setup_args(plan, str(tmp_path / "runs"))),
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert shell.parse_markers(proc.stdout)["step"] == ["0 0", "1 1"]
    log = (tmp_path / "runs" / "lora-pipeline-setup.log").read_text()
    assert "$ echo 'quoted; $HOME' && false" in log and "installing tmux" in log


@pytest.mark.pod
def test_setup_probe_reports_missing_modules_here(tmp_path):
    ex = LocalExecutor({"name": "here", "executor": "local"}, tmp_path)
    facts = preflight.probe(ex, "runs", str(LLAMAFACTORY_CLI), False, for_setup=True).facts
    # The pod environment here has LLaMA-Factory but not the guide's extras.
    missing = " ".join(facts["missing_modules"]).split()
    assert "bitsandbytes" in missing and "llamafactory" not in missing
    assert [s["install"] for s in preflight.setup_plan(facts)][-1].startswith("llamafactory[")


