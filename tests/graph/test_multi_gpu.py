"""Several GPUs on one pod: LLaMA-Factory's own torchrun, DeepSpeed's ZeRO, the per-GPU estimate.

What needs no training: how many processes and how they are told, preflight's GPU count and
per-GPU need, ZeRO in the estimate, the cost of every GPU, and a profile naming a DeepSpeed config
getting the file into its run folder, at the path train.yaml names. The distributed path trained
for real on this machine's CPU (two processes under LLaMA-Factory's torchrun, killed and resumed)
is tests/pod/test_multi_gpu_training.py.
"""

from __future__ import annotations

import json

import pytest
import yaml

from lora_style.config import train_yaml
from lora_style.training import cost, estimate, launch, preflight, processes
from lora_style.training.machines import make_executor
from lora_style.training.settings import PodSettings

from helpers.workflow import REPO

PROFILES = REPO / "config" / "hparams"


# ------------------------------------------------------------------ how many processes, told how


def test_gpu_count_above_one_starts_llamafactorys_torchrun_with_that_many_processes():
    assert processes.train_env(PodSettings(gpu_count=2), {}).splitlines()[1:] == [
        "NPROC_PER_NODE=2",
        "FORCE_TORCHRUN=1",
    ]
    # One GPU: no torchrun, and NPROC_PER_NODE=1 keeps a pod with two GPUs from turning the run
    # into two processes behind the plan's back.
    assert processes.train_env(PodSettings(gpu_count=1), {}).splitlines()[1:] == ["NPROC_PER_NODE=1"]
    # DeepSpeed needs torchrun even on one GPU (LLaMA-Factory refuses it otherwise).
    assert "FORCE_TORCHRUN=1" in processes.train_env(PodSettings(), {"deepspeed": "deepspeed/ds_z3.json"})
    # CPU processes, for the distributed path on a machine without GPUs; their device is "cpu"
    # (accelerate's "cpu:0" breaks transformers' resume of the optimizer state).
    assert processes.world_size(PodSettings(processes=2, gpu_count=1)) == 2
    assert "ACCELERATE_TORCH_DEVICE=cpu" in processes.train_env(PodSettings(processes=2), {})
    assert "ACCELERATE_TORCH_DEVICE" not in processes.train_env(PodSettings(gpu_count=2), {})


@pytest.mark.parametrize(
    "found, settings, ok, said",
    [
        (2, PodSettings(gpu_count=2), True, "2 processes under torchrun, one per GPU"),
        (
            1,
            PodSettings(gpu_count=2),
            False,
            "the run trains on 2 GPUs (pods.p.gpu_count: 2); the pod has 1 GPU",
        ),
        (0, PodSettings(gpu_count=2), False, "the pod has no NVIDIA GPU"),
        (
            4,
            PodSettings(gpu_count=2),
            True,
            "trains on 2 of the pod's 4 GPUs (pods.p.gpu_count: 2); 2 idle, still billed",
        ),
        (0, PodSettings(processes=2), True, "2 CPU processes (gloo) under torchrun"),
        (1, PodSettings(processes=2), False, "pods.p.processes is for a machine without GPUs"),
    ],
)
def test_preflight_compares_the_pods_gpus_with_the_processes(found, settings, ok, said):
    check = processes.check_gpus(found, settings, {}, "/venv/bin/llamafactory-cli", "p")
    assert (check.ok, said in check.detail) == (ok, True), check


def test_a_slurm_jobs_gpus_are_its_processes_and_slurm_checks_them():
    """The login node has no GPUs; the job gets `gpus` of them (--gres), one process each."""
    slurm = PodSettings(executor="slurm", gpus=2)
    assert processes.train_env(slurm, {}).splitlines()[1:] == ["NPROC_PER_NODE=2", "FORCE_TORCHRUN=1"]
    assert processes.check_gpus(0, slurm, {}, "llamafactory-cli", "p") is None


def test_one_process_on_a_cpu_or_one_gpu_needs_no_word():
    assert processes.check_gpus(0, PodSettings(gpu_count=1), {}, "llamafactory-cli", "p") is None
    assert processes.check_gpus(1, PodSettings(gpu_count=1), {}, "llamafactory-cli", "p") is None


def test_a_space_in_llamafactorys_path_is_refused_before_torchrun_splits_it():
    """The launcher builds its torchrun command with " ".join(...).split()."""
    check = processes.check_gpus(2, PodSettings(gpu_count=2), {}, "/opt/my envs/bin/llamafactory-cli", "p")
    assert not check.ok and "space" in check.detail
    assert processes.check_gpus(1, PodSettings(), {}, "/opt/my envs/bin/llamafactory-cli", "p") is None


def test_preflight_reports_both_gpus_and_the_per_gpu_need():
    """2 x 80 GB, the 72B profile: the estimate is per GPU after ZeRO-3, and it fits."""
    args = {
        **yaml.safe_load((PROFILES / "qwen25_72b_2xa100.yaml").read_text()),
        "model_name_or_path": "Qwen/Qwen2.5-72B",
        "deepspeed": "deepspeed/ds_z3.json",
    }
    gpus = [f"{i}, NVIDIA A100-SXM4-80GB, 81920, 81000" for i in range(2)]
    facts = {
        "cli": ["/v/bin/llamafactory-cli"],
        "cli_rc": ["0"],
        "version": ["0.9.5"],
        "gpu": gpus,
        "nvidia_smi_rc": ["0"],
        "import": ["bitsandbytes 0 0.45.0", "deepspeed 0 0.16.4"],
        "dir": ["/workspace/lora-runs"],
        "disk_free_kb": [str(200 * 2**20)],
    }
    report = preflight.evaluate(facts, args, "two", 1000, settings=PodSettings(gpu_count=2))
    checks = {c.name: c for c in report.checks}
    assert not report.failures, [c.detail for c in report.failures]
    assert "per GPU, ZeRO-3 over 2 GPUs" in checks["GPU memory"].detail
    assert "the 2 it trains on have at least" in checks["GPU memory"].detail
    assert checks["GPUs"].detail == "2 processes under torchrun, one per GPU"
    # The same run on one of those GPUs: the pod has it, the memory does not fit.
    one = preflight.evaluate(facts, args, "two", 1000, settings=PodSettings(gpu_count=1))
    assert [c.name for c in one.failures] == ["GPU memory"]


# ---------------------------------------------------------------- what ZeRO shards, per GPU


def test_zero_divides_what_it_shards_and_nothing_else():
    arch = estimate.QWEN25["72"]
    base = {"quantization_bit": 4, "bf16": True, "lora_rank": 64, "cutoff_len": 1024}
    one = estimate.estimate_memory(arch, base)
    ddp = estimate.estimate_memory(arch, base, 2)
    z2 = estimate.estimate_memory(arch, {**base, "deepspeed": "deepspeed/ds_z2.json"}, 2)
    z3 = estimate.estimate_memory(arch, {**base, "deepspeed": "deepspeed/ds_z3.json"}, 2)
    z3off = estimate.estimate_memory(arch, {**base, "deepspeed": "deepspeed/ds_z3_offload.json"}, 2)
    assert ddp.total == pytest.approx(one.total)  # plain DDP: a whole copy per GPU
    assert z2.optimizer == pytest.approx(one.optimizer / 2) and z2.weights == one.weights
    assert z3.weights == pytest.approx(one.weights / 2 + 2 * one.weights / arch.layers)
    assert z3.lora == pytest.approx(one.lora / 2) and z3.optimizer == pytest.approx(one.optimizer / 2)
    assert z3off.optimizer == 0 and z3off.weights == pytest.approx(2 * one.weights / arch.layers)
    for memory in (ddp, z2, z3, z3off):  # each GPU holds its own activations
        assert memory.activations == one.activations and memory.overhead == one.overhead
    assert estimate.zero_config({"deepspeed": "deepspeed/ds_z3_offload.json"}) == estimate.Zero(3, True, True)
    assert estimate.zero_config({}) == estimate.Zero()


def test_the_72b_profile_fits_two_80gb_gpus_by_the_estimate():
    """Its comments' figures: ~61 GB per GPU at cutoff_len 1024; ~94 GB at the guide's 2048."""
    args = dict(
        train_yaml.train_args(
            "big", {"profile": "qwen25_72b_2xa100", "pod": "p", "base_model": "Qwen/Qwen2.5-72B"}
        )
    )
    assert args["deepspeed"] == "deepspeed/ds_z3.json" and args["quantization_bit"] == 4
    arch = estimate.model_arch(args["model_name_or_path"])
    fits = estimate.estimate_memory(arch, args, 2)
    assert round(fits.total) == 61 and fits.total < 80 * 0.95
    assert round(estimate.estimate_memory(arch, {**args, "cutoff_len": 2048}, 2).total) == 94
    # The guide's effective batch of 16: 1 per GPU x 8 accumulation x 2 GPUs.
    assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] * 2 == 16


def test_the_cost_line_counts_every_gpu_at_its_price():
    args = yaml.safe_load((PROFILES / "qwen25_32b_a100.yaml").read_text())
    pod = PodSettings(
        name="two", executor="ssh", gpu_type="NVIDIA A100-SXM4-80GB", gpu_hourly_usd=1.89, gpu_count=2
    )
    line = cost.estimate("lovecraft", args, "qwen25_32b_a100", pod, None).line()
    assert line == (
        "lovecraft: 600 steps, ~14.3 GPU-hours (7.1 h on 2 x A100-SXM4-80GB) at $1.89 per GPU-hour = ~$27.00"
        " (84 steps/h from config/rates.yaml)"
    )
    assert cost.usd_per_hour(pod) == pytest.approx(3.78)


# ---------------------------------------------------------- the DeepSpeed config a profile names


def test_a_profile_names_a_deepspeed_config_and_the_run_folder_gets_its_path():
    run = {"profile": "tiny_cpu", "pod": "p", "base_model": "./m", "overrides": {"deepspeed": "ds_z2"}}
    assert train_yaml.train_args("x", run)["deepspeed"] == "deepspeed/ds_z2.json"
    unset = {**run, "overrides": {}}
    assert "deepspeed" not in train_yaml.train_args("x", unset)
    for bad, said in (("ds_z9", "has no file"), ("ds_z3.json", "without .json"), ("../x", "not the name")):
        with pytest.raises(train_yaml.ConfigError, match=said):
            train_yaml.train_args("x", {**run, "overrides": {"deepspeed": bad}})


def test_the_deepspeed_config_is_part_of_the_runs_identity(tmp_path, monkeypatch):
    """An edit of config/deepspeed/<name>.json starts a new run folder, never mixes."""
    ds_dir = tmp_path / "deepspeed"
    ds_dir.mkdir()
    (ds_dir / "ds_z2.json").write_text((REPO / "config/deepspeed/ds_z2.json").read_text())
    monkeypatch.setattr(train_yaml, "DEEPSPEED_DIR", ds_dir)
    data, info = tmp_path / "train.jsonl", tmp_path / "dataset_info.json"
    data.write_text('{"instruction": "a", "input": "", "output": "b"}\n')
    info.write_text("{}")
    plain, with_ds = tmp_path / "plain.yaml", tmp_path / "ds.yaml"
    plain.write_text("stage: sft\n")
    with_ds.write_text("stage: sft\ndeepspeed: deepspeed/ds_z2.json\n")
    first = launch.RunFiles.load("r", str(with_ds), str(data), str(info))
    assert first.extra == {"deepspeed/ds_z2.json": ds_dir / "ds_z2.json"}
    assert launch.RunFiles.load("r", str(plain), str(data), str(info)).extra == {}
    (ds_dir / "ds_z2.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert launch.RunFiles.load("r", str(with_ds), str(data), str(info)).run_id != first.run_id


def test_the_run_folder_carries_the_deepspeed_config_and_the_process_count(tmp_path):
    """What the upload puts beside train.yaml (here the local executor's folder, the same
    upload as over rsync): the DeepSpeed config at the path train.yaml names, and train.env."""
    run = {"profile": "tiny_cpu", "pod": "p", "base_model": "./m", "overrides": {"deepspeed": "ds_z3"}}
    train, data, info = tmp_path / "train.yaml", tmp_path / "train.jsonl", tmp_path / "dataset_info.json"
    train_yaml.write_yaml(train_yaml.train_args("r", run), str(train))
    data.write_text('{"instruction": "a", "input": "", "output": "b"}\n')
    (tmp_path / "eval.jsonl").write_text('{"instruction": "c", "input": "", "output": "d"}\n')
    info.write_text("{}")
    files = launch.RunFiles.load("r", str(train), str(data), str(info))
    settings = PodSettings(name="p", executor="local", remote_dir=str(tmp_path / "pod"), gpu_count=2)
    run_dir = tmp_path / "pod" / files.run_id
    launch.upload(make_executor(settings), files, str(run_dir), settings)
    named = yaml.safe_load((run_dir / "train.yaml").read_text())["deepspeed"]
    assert (run_dir / named).read_bytes() == (REPO / "config/deepspeed/ds_z3.json").read_bytes()
    assert (run_dir / "train.env").read_text().splitlines()[1:] == ["NPROC_PER_NODE=2", "FORCE_TORCHRUN=1"]
    assert json.loads((run_dir / "run.json").read_text())["inputs"]["deepspeed/ds_z3.json"]
