"""The Slurm executor on a real one-node Slurm (tests/helpers/slurm.py): Debian's slurmctld,
slurmd and munged started as root in a temporary folder, once for this module, with real
LLaMA-Factory training the tiny model in Slurm jobs.

 - preflight refuses a partition that does not exist (nothing uploaded), more GPUs than the
   partition's nodes have, and a time over the partition's limit;
 - through this machine's sbatch, a job with a 1-minute time limit runs out of time; wait
   submits it again, it resumes from its checkpoint and finishes: a full run through Slurm;
 - through the test sshd as the login node: the job waits in the queue behind another, a rerun
   attaches to it instead of submitting a second, it runs, is scancel'ed, and the next call
   resumes it from its checkpoint to the end;
 - on a second cluster of two nodes (two slurmd on this machine), one run trains on both under
   LLaMA-Factory's torchrun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from lora_style.training import run_state
from lora_style.training.settings import PodSettings
from lora_style.training.slurm import node_gpus, parse_time, sbatch_options

from helpers.processes import freeze
from helpers.slurm import start_cluster
from helpers.sshd import Sshd
from helpers.workflow import (
    LLAMAFACTORY_CLI,
    SAMPLE_DATA,
    snakemake,
    snakemake_argv,
    wait_until,
    write_config,
)

ADAPTER = "lora_adapters/style_peft"


# ------------------------------------------------------------------- no cluster needed


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("60", 3600),
        ("2:00", 120),
        ("12:00:00", 43200),
        ("1-00:00:00", 86400),
        ("2-12", 216000),
        ("1-02:03", 93780),
        (90, 5400),
        ("infinite", None),
        ("UNLIMITED", None),
    ],
)
def test_slurm_times(text, seconds):
    assert parse_time(text) == seconds


@pytest.mark.parametrize(
    "gres,gpus",
    [
        ("(null)", 0),
        ("gpu:2", 2),
        ("gpu:a100:4(S:0-1)", 4),
        ("gpu:a100:2,gpu:v100:2", 4),
        ("gpu:h100:8(S:0,1),mps:100", 8),
    ],
)
def test_gpus_of_a_node(gres, gpus):
    assert node_gpus(gres) == gpus


def test_sbatch_options_keep_the_users_args_as_they_are():
    assert sbatch_options(
        PodSettings(partition="gpu", gpus=2, time="12:00:00", sbatch_args=["--account=a b", "--qos=$(x)"])
    ) == ["--partition=gpu", "--gres=gpu:2", "--time=12:00:00", "--account=a b", "--qos=$(x)"]
    assert sbatch_options(PodSettings()) == []
    assert sbatch_options(PodSettings(nodes=2)) == ["--nodes=2", "--ntasks-per-node=1"]


SINFO = {
    "tool": ["sbatch /usr/bin/sbatch", "squeue /usr/bin/squeue", "sinfo /usr/bin/sinfo"],
    "sinfo_rc": ["0"],
    "node": [
        "g1 gpu* up 2-00:00:00 gpu:a100:4(S:0-1)",
        "g2 gpu* up 2-00:00:00 gpu:a100:4(S:0-1)",
        "c1 cpu down infinite (null)",
    ],
}


@pytest.mark.parametrize(
    "facts,pod,args,failed",
    [
        (SINFO, {"gpus": 4, "time": "1-12"}, {"bf16": True}, {}),
        (SINFO, {"gpus": 2}, {}, {}),
        (
            SINFO,
            {},
            {"bf16": True},
            {"GPUs": "the profile sets bf16: True, which need CUDA, but pods.c.gpus is not set"},
        ),
        (SINFO, {"partition": "cpu"}, {}, {"partition": "partition cpu is down"}),
        (
            SINFO,
            {"time": "3-00:00:00", "gpus": 8},
            {},
            {"time limit": "over partition gpu's limit of 2-00:00:00", "GPUs": "have at most 4"},
        ),
        ({"tool": ["sinfo /usr/bin/sinfo"]}, {}, {}, {"Slurm": "sbatch, squeue not found"}),
        (
            {**SINFO, "node": ["c1 cpu up infinite (null)"]},
            {},
            {},
            {"partition": "pods.c.partition is not set and the cluster has no default"},
        ),
    ],
)
def test_preflight_checks_of_a_slurm_cluster(facts, pod, args, failed):
    from lora_style.training.slurm import slurm_checks

    checks = slurm_checks(facts, PodSettings.from_entry({"name": "c", **pod}), args)
    assert {c.name: c.detail for c in checks if not c.ok}.keys() == failed.keys(), checks
    for check in checks:
        if not check.ok:
            assert failed[check.name] in check.detail and "pods.c." in check.fix, check


@pytest.mark.parametrize(
    "line,status,words",
    [
        (
            "launched=1 alive=1 pid= rc= checkpoint= final=0 job=7 slurm=PENDING partition=gpu "
            "reason=Resources",
            "running",
            "queued in partition gpu as Slurm job 7 (waiting: Resources)",
        ),
        (
            "launched=1 alive=0 pid=9 rc= checkpoint=20 final=0 job=7 slurm=TIMEOUT partition=gpu "
            "reason=TimeLimit",
            "killed",
            "ended by Slurm: TIMEOUT (Slurm job 7)",
        ),
        (
            "launched=1 alive=0 pid=9 rc=1 checkpoint= final=0 job=7 slurm=FAILED partition=gpu "
            "reason=NonZeroExitCode",
            "failed",
            "failed with exit status 1",
        ),
        (
            "launched=1 alive=0 pid= rc= checkpoint= final=0 job=7 slurm=FAILED partition=gpu reason=-",
            "died",
            "slurm-7.out",
        ),
    ],
)
def test_slurm_run_states(line, status, words):
    state = run_state.parse_state({"dir": ["/w"], "run": [line]})
    assert state.status == status and words in state.describe()
    assert state.stopped_by_cluster == (state.slurm == "TIMEOUT")


# ------------------------------------------------------------------- the cluster

pod_tests = [pytest.mark.slow, pytest.mark.pod]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    server = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield server
    server.stop()


def env_for(cluster) -> dict:
    # One torch thread per training: the 2 cores are shared with the tests and Slurm itself.
    return {**cluster.env, "OMP_NUM_THREADS": "1"}


def slurm_pod(tmp: Path, **extra) -> dict:
    return {
        "executor": "slurm",
        "remote_dir": str(tmp / "cluster"),
        "partition": "debug",
        "llamafactory_cli": str(LLAMAFACTORY_CLI),
        "poll_seconds": 1,
        **extra,
    }


def style_config(tmp: Path, pod: dict, tiny_model: Path, **overrides) -> Path:
    return write_config(
        tmp / "config.yaml",
        {
            "runs": {
                "style": {
                    "data": str(SAMPLE_DATA),
                    "base_model": str(tiny_model),
                    "profile": "tiny_cpu",
                    "pod": "cluster",
                    "overrides": overrides,
                }
            },
            "pods": {"cluster": pod},
        },
    )


def run_folder(tmp: Path) -> Path | None:
    found = sorted((tmp / "cluster").glob("style-*")) if (tmp / "cluster").exists() else []
    return found[0] if found else None


def attempts(run_dir: Path) -> list[dict]:
    return run_state.parse_attempts((run_dir / "attempts.log").read_text())


def logged_steps(run_dir: Path) -> list[int]:
    steps = []
    for line in (run_dir / "output" / "trainer_log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("loss") is not None:
            steps.append(entry["current_steps"])
    return steps


def checkpoints(run_dir: Path) -> list[int]:
    return sorted(
        int(p.name.split("-")[1])
        for p in (run_dir / "output").glob("checkpoint-*")
        if (p / "trainer_state.json").exists()
    )


def start_snakemake(work: Path, config: Path, name: str, env: dict) -> subprocess.Popen:
    """snakemake in its own process group, as in a terminal (Ctrl-C reaches all of it)."""
    out = open(work.parent / f"{name}.out", "w")
    cmd = snakemake_argv(work, "--", ADAPTER, configfile=config)
    return subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **env}
    )


@pytest.mark.slow
@pytest.mark.pod
def test_preflight_refuses_what_the_partition_cannot_run(tmp_path, cluster, tiny_model):
    """A partition that does not exist stops submit before anything is uploaded; more GPUs than a
    node has, and a time over the partition's limit, stop preflight."""
    work = tmp_path / "work"
    config = style_config(tmp_path, slurm_pod(tmp_path, partition="nosuch"), tiny_model)
    proc = snakemake(
        work, "results/style/train/launch.json", configfile=config, env=env_for(cluster), check=False
    )
    assert proc.returncode != 0
    assert "pods.cluster.partition 'nosuch' is not a partition of this cluster" in proc.stderr
    assert "this cluster has debug, short" in proc.stderr and "fix: set pods.cluster.partition" in proc.stderr
    assert "nothing was uploaded or launched" in proc.stderr
    assert not (tmp_path / "cluster").exists() or not any((tmp_path / "cluster").iterdir())

    config = style_config(tmp_path, slurm_pod(tmp_path, partition="short", gpus=3, time="10"), tiny_model)
    proc = snakemake(
        work, "results/style/train/preflight.json", configfile=config, env=env_for(cluster), check=False
    )
    assert proc.returncode != 0
    assert (
        "pods.cluster.gpus is 3, but the nodes of partition short have at most 2 (gres: gpu:2)" in proc.stderr
    ), proc.stderr[-3000:]
    assert "pods.cluster.time 10 is over partition short's limit of 2:00" in proc.stderr
    assert not cluster.client("squeue", "-h").stdout.strip(), "no job was submitted"


@pytest.mark.slow
@pytest.mark.pod
def test_a_job_over_its_time_limit_is_submitted_again_and_finishes(tmp_path, cluster, tiny_model):
    """sbatch on this machine; each job may run 1 minute. After its first checkpoint the first
    job's trainer is paused (SIGSTOP), as a training far slower than its time limit would be,
    however fast this machine is: Slurm ends the job (TIMEOUT: SIGCONT, SIGTERM), wait submits it
    again, and once it is submitted the test lifts the second job's limit (scontrol, as an admin
    would), so the run takes exactly two jobs."""
    env = env_for(cluster)
    work = tmp_path / "work"
    work.mkdir()
    config = style_config(
        tmp_path, slurm_pod(tmp_path, time=1), tiny_model, max_steps=100, save_steps=20, eval_steps=20
    )
    proc = start_snakemake(work, config, "timeout", env)

    def job() -> str:
        found = run_folder(tmp_path)
        return (found / "slurm_job").read_text().strip() if found and (found / "slurm_job").exists() else ""

    first = wait_until(job, 240, "the first job", proc)
    run_dir = run_folder(tmp_path)
    wait_until(
        lambda: (
            (run_dir / "output").is_dir() and checkpoints(run_dir) and logged_steps(run_dir)[-1] % 20 >= 3
        ),
        240,
        "the first checkpoint",
        proc,
    )
    freeze(run_dir)  # its trainer, below run.sh; Slurm's TIMEOUT sends SIGCONT, then SIGTERM
    paused_at = max(checkpoints(run_dir))
    second = wait_until(
        lambda: job() not in ("", first) and job(), 300, "the job to be submitted again", proc
    )
    cluster.client("scontrol", "update", f"JobId={second}", "TimeLimit=30")
    assert proc.wait(timeout=600) == 0, (work.parent / "timeout.out").read_text()[-3000:]
    launch = json.loads((work / "results/style/train/launch.json").read_text())
    assert launch["executor"] == "slurm" and launch["attempt"]["detach"] == "sbatch"
    assert launch["attempt"]["slurm_job"] == first
    log = (work / "logs/style/wait_training.log").read_text()
    assert (
        f"ended by Slurm: TIMEOUT (Slurm job {first}) (newest checkpoint: "
        f"checkpoint-{paused_at}): submitting it again"
    ) in log, log[-3000:]
    assert [a["from_step"] for a in attempts(run_dir)] == [0, paused_at]
    assert {p.name for p in run_dir.glob("slurm-*.out")} == {f"slurm-{first}.out", f"slurm-{second}.out"}
    steps = logged_steps(run_dir)
    assert steps.count(1) == 1 and steps[-1] == 100
    summary = json.loads((work / ADAPTER / "training_summary.json").read_text())
    assert summary["total_steps"] == 100 and summary["gpu_time"]["attempts"] == 2
    assert (work / ADAPTER / "adapter_model.safetensors").is_file()
    # A rerun is a no-op: nothing asks Slurm for anything.
    assert "Nothing to be done" in snakemake(work, ADAPTER, configfile=config, env=env).stderr


@pytest.mark.slow
@pytest.mark.pod
def test_through_a_login_node_a_queued_job_is_attached_to_cancelled_and_resumed(
    tmp_path, cluster, tiny_model
):
    """The test sshd is the cluster's login node. Another job holds the node's CPUs, so ours
    queues; Ctrl-C and a rerun attach to it (no second job); it runs; scancel stops it; the next
    call resumes it from its newest checkpoint and it trains to the end."""
    env = env_for(cluster)
    server = Sshd(tmp_path / "sshd", env=cluster.env).start()
    blocker = cluster.client(
        "sbatch",
        "--parsable",
        "-p",
        "debug",
        "-c",
        "2",
        "--output=/dev/null",
        "--job-name=blocker",
        "--wrap",
        "sleep 600",
    ).stdout.strip()
    try:
        pod = {
            **server.pod(tmp_path, LLAMAFACTORY_CLI),
            "executor": "slurm",
            "partition": "debug",
            "remote_dir": str(tmp_path / "cluster"),
        }
        config = style_config(tmp_path, pod, tiny_model, max_steps=100, save_steps=20, eval_steps=20)
        work = tmp_path / "work"
        work.mkdir()
        wait_log = work / "logs/style/wait_training.log"

        def said() -> str:
            return wait_log.read_text() if wait_log.exists() else ""

        first = start_snakemake(work, config, "first", env)
        wait_until(
            lambda: "queued in partition debug as Slurm job" in said(),
            240,
            "the job to queue behind the blocker",
            first,
        )
        run_dir = run_folder(tmp_path)
        job = (run_dir / "slurm_job").read_text().strip()
        assert cluster.job_state(job) == "PENDING"
        wait_until(
            lambda: cluster.client("squeue", "-h", "-j", job, "-o", "%r").stdout.strip() == "Resources",
            60,
            "Slurm to say why the job waits",
        )
        os.killpg(first.pid, signal.SIGINT)  # Ctrl-C while the job waits in the queue
        first.wait(timeout=60)
        assert first.returncode != 0 and cluster.job_state(job) == "PENDING"

        wait_log.unlink()
        second = start_snakemake(work, config, "second", env)
        wait_until(lambda: f"following {run_dir.name}" in said(), 120, "the rerun to attach", second)
        assert f"queued in partition debug as Slurm job {job}" in said()
        cluster.client("scancel", blocker)
        wait_until(
            lambda: len(checkpoints(run_dir)) >= 2 and logged_steps(run_dir)[-1] % 20 >= 3,
            240,
            "two checkpoints",
            second,
        )
        assert f"Slurm job {job} running in partition debug" in said()
        cluster.client("scancel", job)  # a person cancels the running job
        last = max(checkpoints(run_dir))
        second.wait(timeout=120)
        out = (work.parent / "second.out").read_text()
        assert second.returncode != 0 and f"ended by Slurm: CANCELLED (Slurm job {job})" in out, out[-3000:]
        assert f"resumes from checkpoint-{last}" in out
        assert not (work / ADAPTER).exists()

        proc = snakemake(work, ADAPTER, configfile=config, env=env)
        assert "resuming" in proc.stderr
        resumed = (run_dir / "slurm_job").read_text().strip()
        assert resumed != job
        assert {p.name for p in run_dir.glob("slurm-*.out")} == {f"slurm-{job}.out", f"slurm-{resumed}.out"}
        assert [a["from_step"] for a in attempts(run_dir)] == [0, last]
        assert "Resuming training from checkpoint" in (run_dir / "train.log").read_text()
        steps = logged_steps(run_dir)
        assert steps.count(1) == 1 and steps[-1] == 100
        summary = json.loads((work / ADAPTER / "training_summary.json").read_text())
        assert summary["total_steps"] == 100 and summary["best_step"] % 20 == 0
        launch = json.loads((work / "results/style/train/launch.json").read_text())
        assert launch["executor"] == "slurm" and launch["attempt"]["slurm_job"] == job
        # What the laptop mirrored is the login node's train.log of both jobs.
        assert (work / "logs/style/train_remote.log").read_bytes() == (run_dir / "train.log").read_bytes()
    finally:
        cluster.client("scancel", blocker, check=False)
        server.stop()


@pytest.mark.parametrize(
    "pod,needle",
    [
        (
            {"executor": "ssh", "host": "h", "partition": "gpu"},
            "config: pods.runpod.executor: must be 'slurm' here, not 'ssh'",
        ),
        ({"executor": "slurm", "time": "12h"}, "config: pods.runpod.time: '12h'"),
        ({"executor": "slurm", "gpus": 0}, "config: pods.runpod.gpus: 0"),
        ({"executor": "slurm", "sbatch_args": "--account=abc"}, "config: pods.runpod.sbatch_args: "),
    ],
)
def test_slurm_keys_are_checked_by_the_schema(tmp_path, pod, needle):
    over = write_config(tmp_path / "overlay.yaml", {"pods": {"runpod": pod}})
    proc = snakemake(tmp_path, "-n", configfile=over, check=False)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("config")]
    assert proc.returncode != 0 and errors and needle in errors[0], proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.pod
def test_two_nodes_train_one_run_under_torchrun(tmp_path_factory, tmp_path, tiny_model):
    """A cluster of two nodes (two slurmd on this machine), `nodes: 2`: the job's srun starts
    run.sh on each, LLaMA-Factory's launcher runs torchrun across them (one gloo process per
    node, NNODES=2, NODE_RANK from SLURM_NODEID, MASTER_ADDR the first node's address). The job
    is cancelled after a checkpoint; the next call resumes both nodes from it, to the end."""
    two = start_cluster(tmp_path_factory.mktemp("slurm2"), nodes=2)
    try:
        env = env_for(two)
        work = tmp_path / "work"
        work.mkdir()
        config = style_config(
            tmp_path,
            slurm_pod(tmp_path, nodes=2, processes=1),
            tiny_model,
            max_steps=60,
            save_steps=10,
            eval_steps=10,
        )
        first = start_snakemake(work, config, "first", env)
        run_dir = wait_until(
            lambda: (
                (d := run_folder(tmp_path))
                and (d / "output").is_dir()
                and checkpoints(d)
                and logged_steps(d)[-1] % 10 >= 3
                and d
            ),
            300,
            "a checkpoint of the two-node training",
            first,
        )
        job = (run_dir / "slurm_job").read_text().strip()
        two.client("scancel", job)
        last = max(checkpoints(run_dir))
        first.wait(timeout=120)
        out = (work.parent / "first.out").read_text()
        assert "preflight: ok   nodes: 2 nodes train one run" in out
        assert f"ended by Slurm: CANCELLED (Slurm job {job})" in out, out[-3000:]

        proc = snakemake(work, ADAPTER, configfile=config, env=env)
        assert "resuming" in proc.stderr
        node0, node1 = (run_dir / "train.log").read_text(), (run_dir / "node-1/train.log").read_text()
        assert "Multi-node training enabled: num nodes: 2, node rank: 0" in node0
        assert "Multi-node training enabled: num nodes: 2, node rank: 1" in node1
        assert "Process rank: 0, world size: 2" in node0 and "Process rank: 1, world size: 2" in node1
        assert "Initializing 1 distributed tasks at: 127.0.0.1:" in node0
        # Two processes in all, each with its own batch of 2: the Trainer's own account.
        assert "Total train batch size (w. parallel, distributed & accumulation) = 4" in node0
        # Both nodes went on from the same checkpoint; node 0 kept the run's books.
        for log in (node0, node1):
            assert f"resuming from output/checkpoint-{last}" in log
        assert [a["from_step"] for a in attempts(run_dir)] == [0, last]
        assert (run_dir / "exit_code").read_text().strip() == "0"
        assert (run_dir / "node-1/output").resolve() == (run_dir / "output").resolve()
        steps = logged_steps(run_dir)
        assert steps.count(1) == 1 and steps[-1] == 60
        summary = json.loads((work / ADAPTER / "training_summary.json").read_text())
        assert summary["total_steps"] == 60
        assert "Nothing to be done" in snakemake(work, ADAPTER, configfile=config, env=env).stderr
    finally:
        two.stop()
