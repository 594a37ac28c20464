"""The SLURM profile end to end on a real (one-node, localhost) SLURM cluster.

Starts munged + slurmctld + slurmd (tests/integration/local_slurm.py; root only, apt-get installs
SLURM when missing), runs the tiny benchmark with ``--workflow-profile workflow/profiles/slurm``
and, at the same time, the same config locally (``--cores 2``, up to the evaluation) as the
reference. Checks that every non-local job was one sbatch job (a SLURM record and a SLURM log per
job, all COMPLETED, with the partition, memory, time limit and CPUs Snakemake asked for) and that
the per-case metrics of both runs are identical (training is seeded and deterministic on CPU).
The daemons are stopped afterwards, also on failure. Wall time: about 5 minutes on 2 cores.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from tests.integration import local_slurm

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "workflow/profiles/slurm"
pytestmark = [pytest.mark.integration, pytest.mark.workflow]

# Test-only overrides of the profile: no accounting on the local cluster, so status comes from
# squeue (MinJobAge=600 keeps finished jobs listed); poll after 2 s instead of 40 s; keep the
# SLURM logs of successful jobs as evidence.
SLURM_ARGS = ("--jobs", "6", "--slurm-status-command", "squeue",
              "--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs")
TIMEOUT_S = 600


def _skip_reason() -> str | None:
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm not installed (pip install -e '.[cluster]')"
    if os.geteuid() != 0:
        missing = local_slurm._missing_commands()
        if missing:
            return (f"SLURM not installed ({', '.join(missing)} missing) and not root: cannot "
                    f"apt-get install it or start slurmd/munged")
        return "not root: starting slurmd and munged for a local test cluster needs root"
    return None


def _tiny_config(workdir: Path) -> Path:
    """tests/workflow/tiny.yaml with results and the MLflow DB inside ``workdir``."""
    text = (REPO / "tests/workflow/tiny.yaml").read_text().replace("RESULTS_DIR", "results")
    cfg = workdir / "tiny.yaml"
    cfg.write_text(text.replace("sqlite:///results", f"sqlite:///{workdir}/results"))
    return cfg


def _start_snakemake(workdir: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    cfg = _tiny_config(workdir)
    bindir = Path(sys.executable).parent
    cmd = [str(bindir / "snakemake"), "-s", str(REPO / "Snakefile"), "--configfile",
           str(REPO / "config/config.yaml"), str(cfg), *args]
    log = (workdir / "snakemake.out").open("w")
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _wait(proc: subprocess.Popen, deadline: float) -> int:
    """Wait until ``deadline``; then SIGINT (Snakemake cancels its SLURM jobs; SIGTERM would
    leave it waiting on them) and, 30 s later, SIGKILL."""
    try:
        return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return -1


def _output(workdir: Path) -> str:
    return (workdir / "snakemake.out").read_text(errors="replace")


def _slurm_jobs(env: dict[str, str]) -> list[dict[str, str]]:
    """Every job slurmctld still remembers (MinJobAge=600 s), as key=value dicts."""
    proc = subprocess.run(["scontrol", "show", "job", "-o"], env=env, capture_output=True,
                          text=True, check=True)
    jobs = []
    for line in proc.stdout.splitlines():
        if line.startswith("JobId="):
            jobs.append(dict(re.findall(r"(\w+)=(\S*)", line)))
    return jobs


def _remote_jobs(out: str) -> dict[str, dict[str, str]]:
    """Snakemake job id -> resources (+ threads) of every "rule x:" block of a run's log."""
    jobs = {}
    for block in re.finditer(r"^rule \w+:\n((?:    .*\n)+)", out, re.M):
        fields = dict(re.findall(r"^    (\w+): (.*)$", block[1], re.M))
        res = dict(item.split("=", 1) for item in fields["resources"].split(", "))
        res["threads"] = fields.get("threads", "1")
        jobs[fields["jobid"]] = res
    return jobs


def _metrics(workdir: Path) -> dict[str, pd.DataFrame]:
    runs = workdir / "results/tiny/runs"
    return {str(p.relative_to(runs)): pd.read_csv(p)
            for p in sorted(runs.glob("**/metrics_per_case.csv"))}


@pytest.fixture
def scratch() -> Path:
    """A short path (the munge socket path must stay below ~100 characters); kept on failure."""
    path = Path(tempfile.mkdtemp(prefix="kdseg-slurm-"))
    path.chmod(0o755)  # munged needs every directory above its socket to be traversable
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_tiny_benchmark_through_sbatch_equals_local_run(scratch: Path,
                                                        record_property) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    t0 = time.monotonic()
    slurm_dir, local_dir = scratch / "slurm-run", scratch / "local-run"
    slurm_dir.mkdir()
    local_dir.mkdir()
    bindir = str(Path(sys.executable).parent)
    try:
        cluster_cm = local_slurm.local_slurm(scratch / "cluster")
        cluster = cluster_cm.__enter__()
    except local_slurm.ClusterUnavailable as err:
        pytest.skip(f"cannot start a local SLURM cluster: {err}")
    ok = False
    try:
        t_cluster = time.monotonic() - t0
        # The profile reads account/partitions from the environment: the local partition, no
        # account, and none of the caller's own settings.
        env = {k: v for k, v in cluster.env.items() if not k.startswith("KDSEG_SLURM_")}
        env["KDSEG_SLURM_PARTITION"] = cluster.partition
        env["PATH"] = f"{cluster.env['PATH'].split(os.pathsep)[0]}{os.pathsep}{bindir}" \
                      f"{os.pathsep}{os.environ['PATH']}"
        local_env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
        local_env["PATH"] = f"{bindir}{os.pathsep}{os.environ['PATH']}"

        # Both runs at once: the SLURM run spends much of its time waiting on sbatch/squeue.
        deadline = time.monotonic() + TIMEOUT_S
        slurm_proc = _start_snakemake(slurm_dir, env, "--workflow-profile", str(PROFILE),
                                      *SLURM_ARGS)
        # The reference needs the per-case metrics only (not the summary and report).
        local_proc = _start_snakemake(local_dir, local_env, "--cores", "2", "--until", "evaluate")
        local_rc = _wait(local_proc, deadline)
        t_local = time.monotonic() - t0 - t_cluster
        slurm_rc = _wait(slurm_proc, deadline)
        t_slurm = time.monotonic() - t0 - t_cluster
        out = _output(slurm_dir)
        assert local_rc == 0, f"local run failed ({local_rc}):\n{_output(local_dir)[-6000:]}"
        assert slurm_rc == 0, f"SLURM run failed ({slurm_rc}):\n{out[-8000:]}"

        # Every job Snakemake ran: remote ("rule x:") or on the submit host ("localrule x:").
        remote = Counter(re.findall(r"^rule (\w+):$", out, re.M))
        local = Counter(re.findall(r"^localrule (\w+):$", out, re.M))
        assert {"train_teacher", "train_student", "predict", "evaluate", "summarize",
                "report"} <= set(remote), remote
        assert "all" in local and not set(remote) & set(local), (remote, local)
        submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", out)
        assert len(submitted) == sum(remote.values()), (submitted, remote)

        # One SLURM job per remote job: all COMPLETED, named by the profile's prefix, each with
        # its rule in the comment and its own log under .snakemake/slurm_logs/rule_<rule>/.
        run_id = re.search(r"SLURM run ID: (\S+)", out)[1]
        assert run_id.startswith("kdseg_")
        records = {j["JobId"]: j for j in _slurm_jobs(env) if j.get("JobName") == run_id}
        assert sorted(records) == sorted(submitted)
        assert {j["JobState"] for j in records.values()} == {"COMPLETED"}, records
        by_rule = Counter(re.match(r"rule_(.+?)(?:_wildcards_.*)?$", j["Comment"])[1]
                          for j in records.values())
        assert by_rule == remote
        logs = {p.stem: p.relative_to(slurm_dir / ".snakemake/slurm_logs").parts[0]
                for p in (slurm_dir / ".snakemake/slurm_logs").glob("rule_*/**/*.log")}
        assert sorted(logs) == sorted(submitted)
        for jobid, rule_dir in logs.items():
            assert records[jobid]["Comment"].startswith(rule_dir), (jobid, rule_dir)
        # The profile's and the rules' resources became sbatch options (-p, --mem, -t, -c).
        jobs = _remote_jobs(out)
        assert len(jobs) == len(records)
        for snakemake_id, slurm_id in re.findall(r"Job (\d+) has been submitted with SLURM "
                                                 r"jobid (\d+)", out):
            res, rec = jobs[snakemake_id], records[slurm_id]
            minutes = int(res["runtime"])
            assert rec["Partition"] == res["slurm_partition"] == cluster.partition
            assert rec["MinMemoryNode"] == f"{res['mem_mb']}M", (rec, res)
            assert rec["TimeLimit"] == f"{minutes // 60:02d}:{minutes % 60:02d}:00", (rec, res)
            assert rec["NumCPUs"] == res["threads"], (rec, res)

        # The same numbers as the local run, run by run.
        ref, got = _metrics(local_dir), _metrics(slurm_dir)
        assert len(ref) == 9 and sorted(got) == sorted(ref)
        for name, frame in ref.items():
            pd.testing.assert_frame_equal(got[name], frame, check_exact=True, obj=name)
        assert (slurm_dir / "results/tiny/summary/comparison.md").exists()
        assert (slurm_dir / "results/tiny/report/index.html").exists()
        ok = True
    finally:
        t_stop = time.monotonic()
        cluster_cm.__exit__(None, None, None)
        t_stop = time.monotonic() - t_stop
        if not ok:  # keep the evidence
            kept = Path(tempfile.mkdtemp(prefix="kdseg-slurm-failed-"))
            shutil.copytree(scratch, kept, dirs_exist_ok=True, ignore_dangling_symlinks=True,
                            ignore=shutil.ignore_patterns("*.sock*", "munge.socket*"))
            print(f"test_slurm: failed; cluster and run directories kept in {kept}")
    total = time.monotonic() - t0
    summary = (f"test_slurm wall time {total:.0f} s: cluster start {t_cluster:.1f} s, "
               f"local run {t_local:.0f} s, SLURM run {t_slurm:.0f} s "
               f"({len(submitted)} sbatch jobs, {sum(local.values())} local jobs; both runs "
               f"concurrently), stop {t_stop:.1f} s")
    print(summary)
    record_property("wall_time_s", round(total, 1))
    record_property("timings", summary)
