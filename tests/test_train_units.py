"""The remote training stage's pure parts: estimates, the checkpoint choice, commands, hints."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import xml.dom.minidom
from pathlib import Path

import pytest
import yaml

import best_checkpoint
import preflight
import remote_train
from conftest import REPO
from executor import LocalExecutor, PodError, SSHExecutor, make_executor

PROFILES = REPO / "config" / "profiles"

# The guide's "Training Results" table: step -> (train loss, val loss).
GUIDE_TABLE = {100: (1.013, 0.977), 200: (0.720, 0.703), 400: (0.293, 0.402),
               600: (0.131, 0.358), 800: (0.044, 0.392), 1500: (0.029, 0.473)}


def guide_trainer_state() -> dict:
    """A trainer_state.json as LLaMA-Factory writes it for the guide's 1500-step run."""
    history = []
    for step in range(10, 1501, 10):
        train = GUIDE_TABLE.get(step, (max(0.03, 1.1 * 0.997 ** step), None))[0]
        history.append({"epoch": step / 209, "learning_rate": 1e-4, "loss": train, "step": step})
        if step in GUIDE_TABLE:
            history.append({"epoch": step / 209, "eval_loss": GUIDE_TABLE[step][1], "step": step})
    return {"global_step": 1500, "max_steps": 1500, "log_history": history}


# ------------------------------------------------------------------------ the memory estimate

def test_memory_estimate_reproduces_the_guides_32b_figures():
    args = yaml.safe_load((PROFILES / "qwen25_32b_a100.yaml").read_text())
    args["model_name_or_path"] = "Qwen/Qwen2.5-32B"
    memory = preflight.estimate_memory(preflight.model_arch(args["model_name_or_path"]), args)
    # The guide's "Memory Requirements" section, part for part.
    assert 16 <= memory.weights <= 18
    assert 2 <= memory.lora <= 3
    assert 6 <= memory.optimizer <= 8
    assert 40 <= memory.activations <= 50
    assert 70 <= memory.total <= 80


def test_memory_estimate_follows_the_guides_advice_for_smaller_gpus():
    big = yaml.safe_load((PROFILES / "qwen25_32b_a100.yaml").read_text())
    small = yaml.safe_load((PROFILES / "qwen25_14b.yaml").read_text())
    m32 = preflight.estimate_memory(preflight.QWEN25["32"], big)
    m14 = preflight.estimate_memory(preflight.QWEN25["14"], small)
    assert m14.total < 48 < m32.total          # 14B at rank 32 fits a 48 GB card, 32B does not
    half = preflight.estimate_memory(preflight.QWEN25["32"], {**big, "lora_rank": 32})
    assert half.lora == pytest.approx(m32.lora / 2)
    short = preflight.estimate_memory(preflight.QWEN25["32"], {**big, "cutoff_len": 1024})
    assert short.activations == pytest.approx(m32.activations / 2)
    assert preflight.estimate_memory(preflight.QWEN25["32"], {**big, "quantization_bit": None}).weights > 60


def test_arch_of_a_local_model_comes_from_its_config(tiny_model):
    arch = preflight.model_arch(str(tiny_model))
    config = json.loads((tiny_model / "config.json").read_text())
    assert (arch.hidden, arch.layers) == (config["hidden_size"], config["num_hidden_layers"])
    assert preflight.model_arch("someone/unknown-model") is None


def test_needs_cuda_names_the_keys():
    assert preflight.needs_cuda({"quantization_bit": 4, "bf16": True}) == ["quantization_bit: 4", "bf16: True"]
    assert preflight.needs_cuda(yaml.safe_load((PROFILES / "tiny_cpu.yaml").read_text())) == []


def test_planned_steps():
    assert preflight.planned_steps({"max_steps": 600}, 8840) == 600
    args = {"num_train_epochs": 2.0, "val_size": 0.1, "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 2}
    assert preflight.planned_steps(args, 100) == 2 * 23   # 90 train examples, 4 per step


def test_disk_estimate_takes_a_fractional_save_steps_as_a_share_of_the_run():
    arch = preflight.QWEN25["32"]
    every_tenth = preflight.estimate_disk(arch, {"save_steps": 0.1}, 600)      # every 60 steps
    assert every_tenth == pytest.approx(preflight.estimate_disk(arch, {"save_steps": 60}, 600))
    assert preflight.save_interval({"save_steps": 0.1}, 600) == 60
    assert preflight.save_interval({"save_steps": 0.3}, 10) == 3               # rounded up, as transformers does
    assert preflight.save_interval({"save_steps": 0.01}, 5) == 1               # never 0
    assert preflight.save_interval({}, 600) == 500


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


def test_probe_runs_here_and_finds_the_pod_environment(tmp_path):
    """The real probe script through the local executor: this machine's facts."""
    from conftest import LLAMAFACTORY_CLI

    ex = LocalExecutor({"name": "here", "executor": "local"}, tmp_path)
    text = ex.sh(preflight.probe_script("runs dir", str(LLAMAFACTORY_CLI), check_bnb=False)).text
    facts = preflight.parse_markers(text)
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
    script = preflight.setup_script(plan, str(tmp_path / "runs"))
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 1
    assert preflight.parse_markers(proc.stdout)["step"] == ["0 0", "1 1"]
    log = (tmp_path / "runs" / "lora-pipeline-setup.log").read_text()
    assert "$ echo 'quoted; $HOME' && false" in log and "installing tmux" in log


def test_setup_probe_reports_missing_modules_here(tmp_path):
    from conftest import LLAMAFACTORY_CLI

    ex = LocalExecutor({"name": "here", "executor": "local"}, tmp_path)
    facts = preflight.parse_markers(
        ex.sh(preflight.probe_script("runs", str(LLAMAFACTORY_CLI), False, for_setup=True)).text)
    # The pod environment here has LLaMA-Factory but not the guide's extras.
    missing = " ".join(facts["missing_modules"]).split()
    assert "bitsandbytes" in missing and "llamafactory" not in missing
    assert [s["install"] for s in preflight.setup_plan(facts)][-1].startswith("llamafactory[")


# ---------------------------------------------------------------------------- the executors

def test_ssh_checks_host_keys_and_quotes_every_command(tmp_path):
    ex = SSHExecutor({"name": "runpod", "executor": "ssh", "host": "203.0.113.7", "port": 22022,
                      "user": "root", "identity_file": "~/.ssh/id_ed25519",
                      "known_hosts": "known hosts/pods"}, tmp_path)
    opts = ex.ssh_options()
    assert "StrictHostKeyChecking=accept-new" in opts
    assert not any("StrictHostKeyChecking=no" in o for o in opts)
    assert f'UserKnownHostsFile="{tmp_path}/known hosts/pods"' in opts
    assert opts[opts.index("-p") + 1] == "22022"
    assert "IdentitiesOnly=yes" in opts and "BatchMode=yes" in opts
    hostile = "x'; rm -rf / #"
    argv = ex.ssh_argv(shlex.join(["sh", "-c", f"echo {shlex.quote(hostile)}"]))
    assert argv[-2] == "root@203.0.113.7"
    # What the pod's login shell receives parses back to exactly one echo of the hostile value.
    assert shlex.split(argv[-1]) == ["sh", "-c", f"echo {shlex.quote(hostile)}"]
    out = subprocess.run(shlex.split(argv[-1]), capture_output=True, text=True).stdout
    assert out == hostile + "\n"


def test_ssh_leaves_port_user_and_key_to_ssh_config_when_unset(tmp_path):
    ex = SSHExecutor({"name": "p", "executor": "ssh", "host": "mypod"}, tmp_path)
    opts = ex.ssh_options()
    assert "-p" not in opts and "-i" not in opts and ex.destination() == "mypod"


def test_executor_kinds(tmp_path):
    assert make_executor({"executor": "local"}, tmp_path).kind == "local"
    with pytest.raises(PodError, match="pods.p.host is missing"):
        make_executor({"name": "p", "executor": "ssh"}, tmp_path)
    with pytest.raises(PodError, match="identity_file: .*does not exist"):
        make_executor({"name": "p", "executor": "ssh", "host": "h",
                       "identity_file": str(tmp_path / "nokey")}, tmp_path).sh("true")


def test_no_ssh_or_rsync_here_is_a_clear_error_not_a_traceback(tmp_path, monkeypatch):
    """The executor's CLI with an empty PATH: one line saying what to install, exit status 1."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    settings = json.dumps({"name": "runpod", "executor": "ssh", "host": "203.0.113.7"})
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "executor.py"), "--pod-settings",
                           settings, "true"], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": str(empty)})
    assert proc.returncode == 1
    assert proc.stderr == "error: ssh not found on this machine: install the OpenSSH client\n"
    monkeypatch.setenv("PATH", str(empty))
    ex = SSHExecutor(json.loads(settings), tmp_path)
    with pytest.raises(PodError, match="^rsync not found on this machine: install rsync$"):
        ex.get("/remote/file", tmp_path / "file")


def test_unreadable_pod_settings_name_the_file(tmp_path):
    from executor import load_settings

    with pytest.raises(PodError, match=f"--pod-settings file {tmp_path}/nope.json: cannot read it"):
        load_settings(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text('{"name": "p",')
    with pytest.raises(PodError, match=f"--pod-settings file {tmp_path}/bad.json is not valid JSON"):
        load_settings(str(tmp_path / "bad.json"))
    with pytest.raises(PodError, match=r"--pod-settings \(JSON text\) is not valid JSON"):
        load_settings('{"name": ')
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(PodError, match="is not a JSON object"):
        load_settings(str(tmp_path / "list.json"))
    assert load_settings('{"name": "p", "executor": "local"}') == {"name": "p", "executor": "local"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "remote_train.py"), "fetch",
                           "--run", "style", "--pod-settings", str(tmp_path / "nope.json"),
                           *(f"--{o}=x" for o in ("launch", "finished", "adapter-dir", "summary",
                                                  "plot", "trainer-state"))],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"error: --pod-settings file {tmp_path}/nope.json: cannot read it" in proc.stderr


# --------------------------------------------------------------------- the checkpoint choice

def test_guide_loss_table_selects_step_600(tmp_path):
    """The guide found step 600 of 1500 best; the pipeline finds it from trainer_state.json."""
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps(guide_trainer_state()))
    checkpoints = list(range(100, 1501, 100))   # save_steps: 100
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "best_checkpoint.py"),
         str(path), "--checkpoints", *map(str, checkpoints), "--plot", str(tmp_path / "loss.svg")],
        capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == {"best_step": 600, "best_eval_loss": 0.358,
                                       "selected_by": "min_eval_loss"}
    svg = (tmp_path / "loss.svg").read_text()
    xml.dom.minidom.parseString(svg)              # well-formed
    assert "chosen: step 600, eval_loss 0.358" in svg


def test_only_saved_checkpoints_can_be_chosen():
    history = guide_trainer_state()["log_history"]
    # save_total_limit kept only the last checkpoints: the best one left is step 800.
    assert best_checkpoint.select_checkpoint(history, [800, 1000, 1500]).step == 800


def test_no_evaluation_falls_back_to_the_last_checkpoint():
    history = [e for e in guide_trainer_state()["log_history"] if "eval_loss" not in e]
    choice = best_checkpoint.select_checkpoint(history, [500, 1000, 1500])
    assert (choice.step, choice.eval_loss, choice.selected_by) == (1500, None, "last_checkpoint")


def test_ties_choose_the_earlier_step():
    history = [{"step": 5, "eval_loss": 1.0}, {"step": 10, "eval_loss": 1.0}]
    assert best_checkpoint.select_checkpoint(history, [5, 10]).step == 5


# ------------------------------------------------------------------------ states and messages

@pytest.mark.parametrize("line,status", [
    ("launched=1 alive=1 pid=42 rc= checkpoint=10 final=0", "running"),
    ("launched=1 alive=0 pid=42 rc=0 checkpoint=20 final=1", "finished"),
    ("launched=1 alive=0 pid=42 rc=137 checkpoint=10 final=0", "killed"),
    ("launched=1 alive=0 pid=42 rc=1 checkpoint= final=0", "failed"),
    ("launched=1 alive=0 pid=42 rc= checkpoint=15 final=0", "died"),
    ("launched=0 alive=0 pid= rc= checkpoint= final=0", "new"),
])
def test_run_states(line, status):
    state = remote_train.parse_state({"dir": ["/w"], "run": [line]})
    assert state.status == status
    assert remote_train.parse_state({"dir": ["/w"], "no_run_dir": [""]}).status == "new"


@pytest.mark.parametrize("log,expected", [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "per_device_train_batch_size to 1"),
    ("ModuleNotFoundError: No module named 'bitsandbytes'", "pip install bitsandbytes>=0.39.0"),
    ("ValueError: Undefined dataset style_sft in dataset_info.json.", "must match a key in dataset_info.json"),
])
def test_failures_get_the_guides_troubleshooting_hint(log, expected):
    state = remote_train.parse_state({"dir": ["/w"], "run": ["launched=1 alive=0 pid=1 rc=1 checkpoint= final=0"]})
    assert expected in remote_train.hint_for(f"...\n{log}\n", state, "style", "runpod")


def test_a_killed_run_is_told_it_will_resume():
    state = remote_train.parse_state({"dir": ["/w"], "run": ["launched=1 alive=0 pid=1 rc=137 checkpoint=35 final=0"]})
    assert "resumes from checkpoint-35" in remote_train.hint_for("Killed\n", state, "style", "p")


def test_progress_line():
    line = remote_train.format_progress({"current_steps": 300, "total_steps": 600, "elapsed_time": "3:30:00",
                                         "remaining_time": "3:30:00"}, 0.293, 0.402)
    assert line.startswith("step 300/600 [############------------]  50.0%")
    assert "loss 0.2930" in line and "eval_loss 0.4020" in line and "remaining 3:30:00" in line


def test_run_sh_resumes_from_the_newest_complete_checkpoint(tmp_path):
    """run.sh for real, with a stand-in for llamafactory-cli that prints its arguments."""
    fake = tmp_path / "fake-cli"
    fake.write_text('#!/bin/sh\necho "ARGS $*"\nexit 3\n')
    fake.chmod(0o755)
    run = tmp_path / "run"
    (run / "output" / "checkpoint-5").mkdir(parents=True)
    (run / "output" / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (run / "output" / "checkpoint-10").mkdir()     # no trainer_state.json: cut off mid-save
    (run / "run.sh").write_text(remote_train.run_sh(str(fake), "style-abc"))
    assert subprocess.run(["sh", str(run / "run.sh")]).returncode == 3
    log = (run / "train.log").read_text()
    assert "ARGS train train.yaml resume_from_checkpoint=output/checkpoint-5 overwrite_output_dir=false" in log
    assert (run / "exit_code").read_text().strip() == "3"
    assert remote_train.parse_attempts((run / "attempts.log").read_text())[0]["from_step"] == 5


def test_input_hash_keys_the_run_folder(tmp_path, tiny_model):
    (tmp_path / "train.yaml").write_text(f"model_name_or_path: {tiny_model}\nlora_rank: 8\n")
    (tmp_path / "train.jsonl").write_text('{"instruction": "a", "input": "", "output": "b"}\n')
    (tmp_path / "dataset_info.json").write_text("{}")
    load = lambda: remote_train.RunFiles.load("style", *(str(tmp_path / n) for n in
                                                         ("train.yaml", "train.jsonl", "dataset_info.json")))
    first = load()
    assert first.run_id == load().run_id and first.run_id.startswith("style-")
    assert "base_model" in first.sha256
    (tmp_path / "train.jsonl").write_text('{"instruction": "a", "input": "", "output": "c"}\n')
    assert load().run_id != first.run_id


def test_launch_falls_back_to_setsid_nohup_and_never_starts_twice(tmp_path):
    """The launch script for real: a broken tmux, a stand-in trainer; a second launch attaches."""
    import os
    import time

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tmux").write_text("#!/bin/sh\nexit 1\n")          # present but failing
    trainer = bin_dir / "trainer"
    trainer.write_text("#!/bin/sh\nsleep 2\necho trained\n")
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    run = tmp_path / "runs" / "style-abc"
    run.mkdir(parents=True)
    (run / "run.sh").write_text(remote_train.run_sh(str(trainer), "style-abc"))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def launch():
        out = subprocess.run(["sh", "-c", remote_train.launch_script(str(run), "lora-style-abc")],
                             capture_output=True, text=True, env=env, timeout=60).stdout
        return preflight.parse_markers(out)

    first = launch()
    assert first["detach"] == ["setsid nohup"] and first["pid"][0].isdigit()
    again = launch()
    assert again["already"] == first["pid"]                      # alive: attached, not started
    state_of = lambda: remote_train.parse_state(preflight.parse_markers(subprocess.run(
        ["sh", "-c", remote_train.state_script(str(run.parent), run.name)],
        capture_output=True, text=True).stdout))
    assert state_of().status == "running"
    deadline = time.monotonic() + 30
    while state_of().status == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state_of().status == "finished"
    assert (run / "attempts.log").read_text().count("start ") == 1
    assert "trained" in (run / "train.log").read_text()


def test_only_this_folders_own_run_sh_counts_as_alive(tmp_path):
    """A pid that runs another folder's run.sh (a pid reused after a pod restart) is not alive."""
    script = remote_train.launch_script("/w/style-abc", "lora-style-abc")
    # Every way of starting it runs run.sh by the absolute path the state script matches.
    assert "here=$(pwd -P)" in script and script.count('sh "$here/run.sh"') == 3
    runs = (tmp_path / "runs").resolve()
    for name in ("style-abc", "style-abc2", "other"):
        (runs / name).mkdir(parents=True)
        (runs / name / "run.sh").write_text("sleep 30\necho done\n")   # sh stays the process

    def status_with(cmd: list[str]) -> str:
        proc = subprocess.Popen(cmd)
        try:
            (runs / "style-abc" / "pid").write_text(f"{proc.pid}\n")
            out = subprocess.run(["sh", "-c", remote_train.state_script(str(runs), "style-abc")],
                                 capture_output=True, text=True).stdout
            return remote_train.parse_state(preflight.parse_markers(out)).status
        finally:
            proc.kill()
            proc.wait()

    assert status_with(["sh", str(runs / "style-abc" / "run.sh")]) == "running"
    assert status_with(["sh", str(runs / "other" / "run.sh")]) == "died"
    assert status_with(["sh", str(runs / "style-abc2" / "run.sh")]) == "died"
    assert status_with(["sleep", "30"]) == "died"


# ---------------------------------------------------------------------------- fetch and stop

def _finished_run(tmp_path):
    """A finished run folder as the local executor sees it, with one checkpoint."""
    run = tmp_path / "pod" / "style-abc"
    ckpt = run / "output" / "checkpoint-5"
    ckpt.mkdir(parents=True)
    state = json.dumps({"log_history": [{"step": 5, "loss": 1.0}, {"step": 5, "eval_loss": 0.9}]})
    for name, text in {"adapter_model.safetensors": "weights", "adapter_config.json": "{}",
                       "trainer_state.json": state}.items():
        (ckpt / name).write_text(text)
    (run / "output" / "trainer_state.json").write_text(state)
    (run / "output" / "trainer_log.jsonl").write_text('{"current_steps": 5, "loss": 1.0}\n')
    (run / "run.sh").write_text("")
    (run / "exit_code").write_text("0\n")
    settings = {"name": "here", "executor": "local", "remote_dir": str(tmp_path / "pod")}
    return settings, LocalExecutor(settings, tmp_path)


def _fetch(tmp_path, settings, ex):
    out = tmp_path / "work"
    return remote_train.fetch("style", settings, ex, {"run_id": "style-abc"}, {}, out / "style_peft",
                              out / "summary.json", out / "loss.svg", out / "trainer_state.json",
                              remote_train.Say("style"))


def test_fetch_lands_the_adapter_then_the_summary(tmp_path):
    settings, ex = _finished_run(tmp_path)
    summary = _fetch(tmp_path, settings, ex)
    assert summary["best_step"] == 5
    work = tmp_path / "work"
    assert {p.name for p in (work / "style_peft").iterdir()} == {
        "adapter_model.safetensors", "adapter_config.json", "trainer_state.json", "trainer_log.jsonl",
        "training_summary.json"}
    assert sorted(p.name for p in work.iterdir()) == ["loss.svg", "style_peft", "summary.json",
                                                      "trainer_state.json"]


def test_fetch_refuses_a_non_empty_adapter_folder_before_anything_else(tmp_path):
    settings, ex = _finished_run(tmp_path)
    adapter = tmp_path / "work" / "style_peft"
    adapter.mkdir(parents=True)
    (adapter / "old.txt").write_text("mine")
    with pytest.raises(PodError, match="style_peft already exists and is not empty.*remove it"):
        _fetch(tmp_path, settings, ex)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["style_peft"]
    assert [p.name for p in adapter.iterdir()] == ["old.txt"]


def test_fetch_writes_no_summary_when_the_adapter_cannot_land(tmp_path, monkeypatch):
    settings, ex = _finished_run(tmp_path)
    real_replace = remote_train.os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".style_peft."):  # the adapter's staging folder
            raise OSError(39, "Directory not empty")
        return real_replace(src, dst)

    monkeypatch.setattr(remote_train.os, "replace", replace)
    with pytest.raises(PodError, match="cannot move the downloaded adapter into .*style_peft"):
        _fetch(tmp_path, settings, ex)
    assert list((tmp_path / "work").iterdir()) == []      # no summary, plot, state or staging left


@pytest.mark.parametrize("command,cut,message", [
    ("submit", "preflight", "stopped before the launch; nothing was launched on the pod"),
    ("submit", "launch", "stopped during the launch, which may be incomplete on the pod. Run "
                         "snakemake again: it re-attaches to the training if it started"),
    ("wait", "wait", "stopped following; the training goes on on the pod"),
    ("fetch", "download", "download stopped; nothing landed. Run snakemake again: it fetches again"),
])
def test_ctrl_c_says_what_it_stopped(tmp_path, monkeypatch, capsys, command, cut, message):
    settings, ex = _finished_run(tmp_path)
    monkeypatch.setattr(remote_train, "_stop_on_signals", lambda: None)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    report = preflight.Report(remote_dir=str(tmp_path / "pod"), cli_path="/x/llamafactory-cli")
    if cut == "preflight":
        monkeypatch.setattr(remote_train, "run_preflight", interrupt)
    elif cut == "launch":
        monkeypatch.setattr(remote_train, "run_preflight", lambda *a: report)
        monkeypatch.setattr(remote_train, "upload", lambda *a: None)
        monkeypatch.setattr(remote_train, "launch_script", interrupt)
    elif cut == "wait":
        monkeypatch.setattr(remote_train, "wait", interrupt)
    else:
        monkeypatch.setattr(remote_train, "download_verified", interrupt)
    for name, text in {"train.yaml": "model_name_or_path: someone/model\n", "train.jsonl": "{}\n", "info.json": "{}"}.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "launch.json").write_text(json.dumps({"run_id": "style-abc"}))
    (tmp_path / "finished.json").write_text("{}")
    files = ["--train-yaml", str(tmp_path / "train.yaml"), "--data", str(tmp_path / "train.jsonl"),
             "--dataset-info", str(tmp_path / "info.json")]
    args = {"submit": [*files, "--output", str(tmp_path / "out.json")],
            "wait": [*files, "--launch", str(tmp_path / "launch.json"), "--output",
                     str(tmp_path / "out.json"), "--remote-log", str(tmp_path / "remote.log")],
            "fetch": ["--launch", str(tmp_path / "launch.json"), "--finished",
                      str(tmp_path / "finished.json"), "--adapter-dir", str(tmp_path / "work/style_peft"),
                      "--summary", str(tmp_path / "work/s.json"), "--plot", str(tmp_path / "work/l.svg"),
                      "--trainer-state", str(tmp_path / "work/t.json")]}[command]
    monkeypatch.setattr(remote_train, "make_executor", lambda settings: ex)
    rc = remote_train.main([command, "--run", "style", "--pod-settings", json.dumps(settings), *args])
    err = capsys.readouterr().err
    assert rc == 130
    assert f"[style] {message}" in err, err
    assert not (tmp_path / "out.json").exists()
    assert not (tmp_path / "work").exists() or list((tmp_path / "work").iterdir()) == []
