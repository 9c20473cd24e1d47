"""Preflight's checks on recorded pod facts, the real probe here, and the opt-in setup (lora_style/training/preflight.py)."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest
import yaml

from lora_style.training import pod_setup, preflight, shell
from lora_style.training.executor import LocalExecutor
from lora_style.training.settings import PodSettings

from helpers.workflow import LLAMAFACTORY_CLI, REPO

PROFILES = REPO / "config" / "hparams"

# -------------------------------------------------------------------------- preflight checks

FACTS_OK = {
    "ok": [""],
    "cli": ["/opt/lf/bin/llamafactory-cli"],
    "cli_rc": ["0"],
    "version": ["0.9.5"],
    "dir": ["/workspace/lora-runs"],
    "disk_free_kb": [str(500 * 10**6)],
    "tmux": ["tmux 3.3a"],
}


def _guide_args():
    args = yaml.safe_load((PROFILES / "qwen25_32b_a100.yaml").read_text())
    return {**args, "model_name_or_path": "Qwen/Qwen2.5-32B"}


def test_preflight_a100_80gb_passes_the_guides_profile():
    facts = {
        **FACTS_OK,
        "nvidia_smi_rc": ["0"],
        "gpu": ["0, NVIDIA A100-SXM4-80GB, 81920, 81000"],
        "import": ["bitsandbytes 0 0.45.0"],
    }
    report = preflight.evaluate(facts, _guide_args(), "runpod", 8840)
    assert not report.failures, report.failures
    assert report.detach == "tmux"


def test_preflight_a_40gb_gpu_fails_with_the_guides_advice():
    facts = {
        **FACTS_OK,
        "nvidia_smi_rc": ["0"],
        "gpu": ["0, NVIDIA A100-PCIE-40GB, 40960, 40000"],
        "import": ["bitsandbytes 0 0.45.0"],
    }
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
    assert "bitsandbytes" in names and "pip install 'bitsandbytes>=0.39.0'" in names["bitsandbytes"].fix


def test_preflight_small_disk_fails():
    facts = {
        **FACTS_OK,
        "nvidia_smi_rc": ["0"],
        "gpu": ["0, H100, 81559, 80000"],
        "import": ["bitsandbytes 0 0.45.0"],
        "disk_free_kb": [str(10 * 10**6)],
    }
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


def test_preflight_over_ssh_needs_a_shell_that_prints_nothing_of_its_own():
    """What the login shell prints before the probe's first line (probe.sh starts with a newline,
    so a banner without one ends there too) is told apart from the probe's answers."""
    assert preflight.shell_noise("\n@@ok\n@@cli /x\n") == ""
    assert preflight.shell_noise("Welcome to your pod\n\n@@ok\n@@cli /x\n") == "Welcome to your pod"
    assert preflight.shell_noise("(base) \n@@ok\n") == "(base)"
    assert preflight.shell_noise("nothing of the probe's") == ""
    tiny = yaml.safe_load((PROFILES / "tiny_cpu.yaml").read_text())
    facts = {**FACTS_OK, "rsync": [""]}
    (failure,) = preflight.evaluate(
        facts, tiny, "runpod", 40, needs_rsync=True, shell_output="Welcome to your pod\nmore"
    ).failures
    assert failure.name == "quiet shell"
    assert failure.detail.startswith("the pod's shell prints 'Welcome to your pod' before every command")
    assert "case $- in *i*) ;; *) return ;; esac" in failure.fix
    # The local executor runs no login shell and copies files itself: nothing to check.
    assert not preflight.evaluate(facts, tiny, "local", 40, shell_output="Welcome").failures


# The real probe script, once, through the local executor (this machine is the pod): what a
# preflight asks (the CLI, its version, the run folder, disk, rsync), the run's packages through
# llamafactory-cli's interpreter, and what setup asks (the modules a fresh pod lacks).
PROBED_NEEDS = (
    preflight.Need("peft", "peft>=0.18.0", "test"),
    preflight.Need("no_such_module_here", "no-such>=1", "test"),
)


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe")
    ex = LocalExecutor(PodSettings(name="here", executor="local"), tmp)
    return tmp, preflight.probe(ex, "runs dir", str(LLAMAFACTORY_CLI), PROBED_NEEDS, for_setup=True).facts


@pytest.mark.pod
def test_probe_runs_here_and_finds_the_pod_environment(probed):
    tmp, facts = probed
    assert facts["cli"] == [str(LLAMAFACTORY_CLI)]
    assert facts["cli_rc"] == ["0"] and facts["version"] == ["0.9.5"]
    assert facts["dir"] == [str((tmp / "runs dir").resolve())]
    assert int(facts["disk_free_kb"][0]) > 0
    assert ("rsync" in facts) == (shutil.which("rsync") is not None)


def _zero3_72b_args():
    args = yaml.safe_load((PROFILES / "qwen25_72b_2xa100.yaml").read_text())
    return {**args, "model_name_or_path": "Qwen/Qwen2.5-72B", "deepspeed": "deepspeed/ds_z3.json"}


def test_preflight_checks_the_runs_packages_at_the_versions_llamafactory_requires():
    """LLaMA-Factory checks deepspeed, and bitsandbytes >= 0.43 for QLoRA under ZeRO-3, only once
    the training has started; preflight asks first, so a wrong pod costs no GPU time."""
    args = _zero3_72b_args()
    assert [(n.module, n.requirement) for n in preflight.run_packages(args)] == [
        ("bitsandbytes", "bitsandbytes>=0.43.0"),
        ("deepspeed", "deepspeed>=0.10.0,<=0.16.9"),
    ]
    gpus = [f"{i}, NVIDIA H100 80GB HBM3, 81559, 81000" for i in range(2)]
    base = {**FACTS_OK, "nvidia_smi_rc": ["0"], "gpu": gpus}
    settings = PodSettings(gpu_count=2)

    def failures(*imports):
        report = preflight.evaluate({**base, "import": list(imports)}, args, "two", 1000, settings=settings)
        return {c.name: c for c in report.failures}

    found = failures("bitsandbytes 0 0.42.0", "deepspeed 1 ModuleNotFoundError: No module named 'deepspeed'")
    assert set(found) == {"bitsandbytes", "deepspeed"}
    assert found["bitsandbytes"].detail == (
        "is version 0.42.0, but quantization_bit: 4 under DeepSpeed ZeRO-3 needs bitsandbytes>=0.43.0"
    )
    assert found["bitsandbytes"].fix == (
        "`pip install 'bitsandbytes>=0.43.0'` on the pod, or set pods.two.setup: true"
    )
    assert "does not import (ModuleNotFoundError: No module named 'deepspeed')" in found["deepspeed"].detail
    assert set(failures("bitsandbytes 0 0.45.0", "deepspeed 0 0.17.1")) == {"deepspeed"}
    assert failures("bitsandbytes 0 0.45.0", "deepspeed 0 0.16.4") == {}
    # The same 4 bits without ZeRO-3 need only bitsandbytes 0.39; without quantisation, nothing.
    guide = _guide_args()
    assert [n.requirement for n in preflight.run_packages(guide)] == ["bitsandbytes>=0.39.0"]
    assert preflight.run_packages({**guide, "quantization_bit": None}) == []
    assert [n.requirement for n in preflight.run_packages({**guide, "quantization_bit": 8})] == [
        "bitsandbytes>=0.37.0"
    ]


@pytest.mark.pod
def test_the_real_probe_asks_llamafactorys_python_for_the_runs_packages(probed):
    """probe.sh imports each module with llamafactory-cli's interpreter: a version, or the error."""
    found = preflight.imported(probed[1])
    pod_python = LLAMAFACTORY_CLI.parent / "python"
    peft_version = subprocess.run(
        [pod_python, "-c", "import importlib.metadata as m; print(m.version('peft'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert found["peft"] == ("0", peft_version)
    assert preflight.unmet(PROBED_NEEDS[0], found) == ""
    rc, said = found["no_such_module_here"]
    assert rc == "1" and "No module named 'no_such_module_here'" in said
    assert preflight.unmet(PROBED_NEEDS[1], found).startswith("does not import (ModuleNotFoundError")


# -------------------------------------------------------------------------------------- setup


def test_setup_plan_installs_what_a_fresh_pod_lacks_the_guides_way():
    fresh = {
        "ok": [""],
        "apt_get": [""],
        "template_dir": [""],
        "python": ["/usr/bin/python3"],
        "cli": ["/usr/local/bin/llamafactory-cli"],
        "missing_modules": ["nltk jieba bitsandbytes"],
    }
    plan = pod_setup.setup_plan(fresh)
    assert [step["install"] for step in plan] == ["tmux", "llamafactory[metrics,bitsandbytes,qwen]"]
    assert "apt-get install -y -qq tmux" in plan[0]["command"]
    # The guide's extras by name: LLaMA-Factory 0.9.5 declares none, so `.[metrics,...]` would
    # install it without them.
    assert shlex.split(plan[1]["command"]) == [
        "/usr/bin/python3",
        "-m",
        "pip",
        "install",
        "-q",
        "-e",
        "/workspace/LLaMA-Factory",
        "nltk",
        "jieba",
        "rouge-chinese",
        "bitsandbytes>=0.39.0",
        "transformers_stream_generator",
    ]
    # Without the template's checkout: the wheel has no extras, so their packages by name.
    plan = pod_setup.setup_plan({"ok": [""], "tmux": ["tmux 3.3a"], "python": ["/usr/bin/env python3"]})
    (step,) = plan
    assert shlex.split(step["command"])[:5] == ["/usr/bin/env", "python3", "-m", "pip", "install"]
    assert "llamafactory==0.9.5" in step["command"] and "bitsandbytes>=0.39.0" in step["command"]


def test_setup_for_the_ssh_executor_installs_rsync_with_tmux():
    fresh = {
        "ok": [""],
        "apt_get": [""],
        "cli": ["/x/llamafactory-cli"],
        "python": ["/x/python"],
        "missing_modules": [""],
    }
    (step,) = pod_setup.setup_plan(fresh, rsync=True)
    assert step["install"] == "tmux rsync"
    assert step["command"].endswith("apt-get install -y -qq tmux rsync")
    (step,) = pod_setup.setup_plan({**fresh, "tmux": ["tmux 3.3a"]}, rsync=True)
    assert step["install"] == "rsync" and step["command"].endswith("apt-get install -y -qq rsync")
    assert pod_setup.setup_plan({**fresh, "tmux": ["tmux 3.3a"], "rsync": [""]}, rsync=True) == []
    # No apt-get: nothing to run, but the plan says what to install by hand.
    plan = pod_setup.setup_plan(
        {"ok": [""], "cli": ["/x/llamafactory-cli"], "missing_modules": [""]}, rsync=True
    )
    assert [(s["install"], s["command"]) for s in plan] == [("tmux", None), ("rsync", None)]
    assert "install rsync on the pod by hand" in plan[1]["note"]


def test_setup_is_idempotent_a_ready_pod_needs_nothing():
    ready = {
        "ok": [""],
        "tmux": ["tmux 3.3a"],
        "apt_get": [""],
        "cli": ["/x/llamafactory-cli"],
        "python": ["/x/python"],
        "missing_modules": [""],
    }
    assert pod_setup.setup_plan(ready) == []


def test_setup_script_runs_logs_and_records(tmp_path):
    """The generated script, run for real with harmless commands, logs each step and its status."""
    plan = [
        {"install": "tmux", "command": "echo installing tmux"},
        {"install": "llamafactory", "command": "echo 'quoted; $HOME' && false"},
        {"install": "nothing", "command": None},
    ]
    proc = subprocess.run(
        shell.argv("setup.sh", *pod_setup.setup_args(plan, str(tmp_path / "runs"))),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert shell.parse_markers(proc.stdout)["step"] == ["0 0", "1 1"]
    log = (tmp_path / "runs" / "lora-pipeline-setup.log").read_text()
    assert "$ echo 'quoted; $HOME' && false" in log and "installing tmux" in log


@pytest.mark.pod
def test_setup_probe_reports_missing_modules_here(probed):
    facts = probed[1]
    # The pod environment here has LLaMA-Factory but not the guide's extras.
    missing = " ".join(facts["missing_modules"]).split()
    assert "bitsandbytes" in missing and "llamafactory" not in missing
    assert [s["install"] for s in pod_setup.setup_plan(facts)][-1].startswith("llamafactory[")


@pytest.mark.pod  # reads the pod environment's LLaMA-Factory metadata
def test_llamafactory_declares_no_extras_so_setup_names_the_packages():
    """The fact behind the setup command: the installed LLaMA-Factory's metadata has no extras."""
    from importlib.metadata import PathDistribution

    (info,) = (LLAMAFACTORY_CLI.parent.parent / "lib").glob("python3*/site-packages/llamafactory-*.dist-info")
    meta = PathDistribution(info).metadata
    assert meta["Version"] == preflight.LLAMAFACTORY_VERSION
    assert meta.get_all("Provides-Extra") is None


def test_setup_installs_the_runs_own_packages_where_missing_or_refused():
    """A DeepSpeed profile on a pod with LLaMA-Factory but no deepspeed, and a bitsandbytes too old
    for ZeRO-3: one pip step for both, with the versions LLaMA-Factory accepts."""
    needs = preflight.run_packages(_zero3_72b_args())
    pod = {
        "ok": [""],
        "tmux": ["tmux 3.3a"],
        "cli": ["/x/llamafactory-cli"],
        "python": ["/x/python"],
        "missing_modules": [""],
        "import": ["bitsandbytes 0 0.42.0", "deepspeed 1 ModuleNotFoundError: No module named"],
    }
    (step,) = pod_setup.setup_plan(pod, needs=needs)
    assert step["missing"] == ["bitsandbytes", "deepspeed"]
    assert shlex.split(step["command"]) == [
        "/x/python",
        "-m",
        "pip",
        "install",
        "-q",
        "bitsandbytes>=0.43.0",
        "deepspeed>=0.10.0,<=0.16.9",
    ]
    ready = {**pod, "import": ["bitsandbytes 0 0.45.0", "deepspeed 0 0.16.4"]}
    assert pod_setup.setup_plan(ready, needs=needs) == []
    # A fresh pod: the run's packages go into the one LLaMA-Factory install.
    (step,) = pod_setup.setup_plan({"ok": [""], "tmux": ["tmux 3.3a"]}, needs=needs)
    assert shlex.split(step["command"])[-2:] == ["bitsandbytes>=0.43.0", "deepspeed>=0.10.0,<=0.16.9"]


def test_setup_on_a_slurm_login_node_plans_no_tmux_and_no_apt_get():
    """sbatch detaches the training (no tmux), and a login node is no place for apt-get: only
    pip into the environment llamafactory_cli names, and rsync by hand if it is missing."""
    login = {
        "ok": [""],
        "apt_get": [""],
        "cli": ["/x/llamafactory-cli"],
        "python": ["/x/python"],
        "missing_modules": ["bitsandbytes"],
    }
    (step,) = pod_setup.setup_plan(login, login_node=True)
    assert step["install"] == "llamafactory[metrics,bitsandbytes,qwen]"
    assert pod_setup.setup_plan({**login, "missing_modules": [""]}, login_node=True) == []
    (step,) = pod_setup.setup_plan({**login, "missing_modules": [""]}, rsync=True, login_node=True)
    assert step["command"] is None and "by hand" in step["note"]
    # The same facts on a pod: apt-get installs tmux and rsync.
    (step,) = pod_setup.setup_plan({**login, "missing_modules": [""]}, rsync=True)
    assert step["command"].endswith("apt-get install -y -qq tmux rsync")
