"""A throw-away one-node SLURM cluster on localhost, for testing the Snakemake SLURM profile.

Usage (as root; installs Debian's ``slurm-wlm slurmctld slurmd slurm-client munge`` with apt-get
when ``sbatch``/``munged`` are missing)::

    python tests/integration/local_slurm.py start  --dir /tmp/slurm   # prints the env to export
    python tests/integration/local_slurm.py status --dir /tmp/slurm
    python tests/integration/local_slurm.py stop   --dir /tmp/slurm

or, from Python (the integration test)::

    with local_slurm(Path("/tmp/slurm")) as cluster:
        subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env)

Everything lives under the given directory: a munge key and socket, ``etc/slurm.conf``, the
daemons' state, spool, pid and log files, and ``bin/srun`` (see SRUN_WRAPPER). Nothing is written
to /etc, and no daemon is registered with an init system. ``cluster.json`` records the daemons
this module started; ``stop`` ends exactly those (``scontrol shutdown`` for slurmctld and slurmd,
``munged -s`` for munged, SIGTERM to the recorded pids as a last resort) and never touches a
daemon it did not start.

The configuration is the minimal one that works without systemd, cgroups or an accounting
database (docs/cluster.md, section SLURM): ``proctrack/linuxproc``, ``task/none``, no job
accounting, ``select/cons_tres`` with ``CR_Core_Memory``, one node (this host at 127.0.0.1, CPUs =
nproc, RealMemory = MemTotal minus a margin) in one default partition, and ``MinJobAge=600`` so
that finished jobs stay visible to ``squeue``/``scontrol show job`` for ten minutes (without
accounting, ``sacct`` cannot report them and ``squeue`` is the only status source).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurm-wlm", "slurmctld", "slurmd", "slurm-client", "munge")
PARTITION = "debug"
CLUSTER_NAME = "kdseg-local"
STATE_FILE = "cluster.json"
MEMORY_MARGIN_MB = 1024  # RealMemory = MemTotal - max(this, 10 %): slurmd refuses a node whose
                         # configured memory exceeds what it detects.

# snakemake-executor-plugin-slurm-jobstep (0.6.x) removes every SLURM_* variable except the job's
# identity from the environment of the `srun` it runs inside each job, SLURM_CONF included; with
# slurm.conf outside /etc/slurm, that srun then fails with "Could not establish a configuration
# source". This wrapper, first on PATH (sbatch --export=ALL carries PATH into the job), restores it.
SRUN_WRAPPER = """#!/bin/sh
# Written by tests/integration/local_slurm.py. The SLURM jobstep executor strips SLURM_CONF before
# its inner srun; restore it so srun finds this cluster's slurm.conf.
SLURM_CONF={conf}
export SLURM_CONF
exec {srun} "$@"
"""

SLURM_CONF = """# Written by tests/integration/local_slurm.py: a one-node test cluster on localhost.
ClusterName={cluster}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/run/slurmctld.pid
SlurmdPidFile={dir}/run/slurmd.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No systemd/cgroups here: track processes by parent pid, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# No slurmdbd: no accounting (so no sacct; squeue + MinJobAge are the status source).
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Finished jobs stay in slurmctld's memory (squeue, scontrol show job) for 10 minutes.
MinJobAge=600
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
InactiveLimit=0
KillWait=5
Waittime=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class ClusterUnavailable(RuntimeError):
    """SLURM cannot be started here (not root, packages missing and not installable, ...)."""


@dataclass
class ClusterInfo:
    """A running local cluster: pass ``env`` to every SLURM client and to Snakemake."""

    dir: Path
    conf: Path  # slurm.conf (also SLURM_CONF in env)
    env: dict[str, str]  # os.environ + SLURM_CONF + the srun wrapper first on PATH
    partition: str = PARTITION
    node: str = ""
    cpus: int = 1
    memory_mb: int = 0
    pids: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# helpers


def _log(msg: str) -> None:
    print(f"[local_slurm] {msg}", file=sys.stderr, flush=True)


def _is_root() -> bool:
    return os.geteuid() == 0


def _missing_commands() -> list[str]:
    needed = ("sbatch", "squeue", "sinfo", "scontrol", "srun", "slurmctld", "slurmd", "munged")
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [c for c in needed if shutil.which(c, path=path) is None]


def _which(cmd: str) -> str:
    found = shutil.which(cmd, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if not found:
        raise ClusterUnavailable(f"{cmd} not found")
    return found


def ensure_installed() -> None:
    """Install the Debian SLURM + munge packages when a command is missing (root only)."""
    missing = _missing_commands()
    if not missing:
        return
    if not _is_root():
        raise ClusterUnavailable(
            f"SLURM is not installed ({', '.join(missing)} missing) and installing it with "
            f"apt-get needs root (running as uid {os.geteuid()})")
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable(f"{', '.join(missing)} missing and no apt-get to install them")
    _log(f"installing {' '.join(PACKAGES)} (missing: {', '.join(missing)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:  # stale package lists: update once and retry
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or _missing_commands():
        raise ClusterUnavailable(f"apt-get install {' '.join(PACKAGES)} failed:\n"
                                 f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) // 1024
            return max(256, total - max(MEMORY_MARGIN_MB, total // 10))
    raise ClusterUnavailable("no MemTotal in /proc/meminfo")


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _free_port(preferred: int, avoid: tuple[int, ...] = ()) -> int:
    if preferred not in avoid and _port_free(preferred):
        return preferred
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("0.0.0.0", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port
    raise ClusterUnavailable("no free TCP port for slurmctld/slurmd")


def _pid_alive(pid: int | None, name: str) -> bool:
    """True when ``pid`` runs a process whose command line mentions ``name``."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return name in cmdline


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _wait(predicate, timeout: float, interval: float = 0.2) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} missing)"


def _run(cmd: list[str], env: dict[str, str], timeout: float = 30,
         check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}")
    return proc


def _paths(directory: Path) -> dict[str, Path]:
    d = directory
    return {
        "munge": d / "munge",  # key, seed, pid, log: 0700
        "munge_socket_dir": d / "munge-socket",  # munged refuses a socket dir others can't enter
        "munge_socket": d / "munge-socket" / "munge.socket.2",
        "conf": d / "etc" / "slurm.conf",
        "bin": d / "bin",
        "state": d / "state",
        "spool": d / "spool",
        "run": d / "run",
        "log": d / "log",
        "record": d / STATE_FILE,
    }


def _cluster_env(directory: Path) -> dict[str, str]:
    p = _paths(directory)
    return {**os.environ, "SLURM_CONF": str(p["conf"]),
            "PATH": f"{p['bin']}{os.pathsep}{os.environ.get('PATH', '')}"}


def _info_from_record(directory: Path, record: dict) -> ClusterInfo:
    p = _paths(directory)
    return ClusterInfo(dir=directory, conf=p["conf"], env=_cluster_env(directory),
                       partition=record["partition"], node=record["node"], cpus=record["cpus"],
                       memory_mb=record["memory_mb"], pids=record["pids"])


def _read_record(directory: Path) -> dict | None:
    try:
        return json.loads(_paths(directory)["record"].read_text())
    except (OSError, ValueError):
        return None


def _alive(record: dict) -> dict[str, bool]:
    return {name: _pid_alive(pid, name) for name, pid in record.get("pids", {}).items()}


# --------------------------------------------------------------------------------------------
# start / stop / status


def node_state(info: ClusterInfo) -> str:
    """The node's state as sinfo reports it ('idle', 'mixed', 'down*', ...), '' if unknown."""
    proc = _run(["sinfo", "-h", "-N", "-n", info.node, "-o", "%T"], info.env, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def start(directory: Path, *, install: bool = True, timeout: float = 60) -> tuple[ClusterInfo,
                                                                                   bool]:
    """Start munged, slurmctld and slurmd for a one-node cluster under ``directory``.

    Returns (info, started): started is False when this directory's cluster was already running
    (then nothing is started and the caller should not stop it). Raises ClusterUnavailable when
    SLURM cannot run here, RuntimeError when a daemon fails to come up (after stopping the ones
    that did).
    """
    directory = Path(directory).resolve()
    record = _read_record(directory)
    if record and all(_alive(record).values()):
        info = _info_from_record(directory, record)
        if node_state(info).rstrip("*~#!%$@^-") in ("idle", "mixed", "allocated"):
            _log(f"cluster in {directory} already running")
            return info, False
    if record:  # a previous start that died or half-started: clean up what it recorded
        stop(directory)
    if not _is_root():
        raise ClusterUnavailable(
            f"starting slurmd and munged needs root (running as uid {os.geteuid()})")
    if install:
        ensure_installed()
    elif _missing_commands():
        raise ClusterUnavailable(f"SLURM not installed: {', '.join(_missing_commands())} missing")

    p = _paths(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    closed = [str(a) for a in directory.parents if not os.stat(a).st_mode & 0o001]
    if closed:  # munged refuses a socket that others cannot reach
        raise ClusterUnavailable(f"{closed[0]} is not traversable by others (chmod o+x): munged "
                                 f"needs every directory above its socket to be")
    for key in ("munge", "munge_socket_dir", "bin", "state", "spool", "run", "log"):
        p[key].mkdir(parents=True, exist_ok=True)
    p["conf"].parent.mkdir(parents=True, exist_ok=True)
    os.chmod(p["munge"], 0o700)
    os.chmod(p["munge_socket_dir"], 0o755)

    key = p["munge"] / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))  # what `mungekey --create` writes: random bytes
    os.chmod(key, 0o600)

    host = socket.gethostname().split(".")[0]
    cpus, memory = _cpus(), _memory_mb()
    ctld_port = _free_port(6817)
    slurmd_port = _free_port(6818, avoid=(ctld_port,))
    p["conf"].write_text(SLURM_CONF.format(
        cluster=CLUSTER_NAME, host=host, ctld_port=ctld_port, slurmd_port=slurmd_port,
        user="root", munge_socket=p["munge_socket"], dir=directory, cpus=cpus, memory=memory,
        partition=PARTITION))
    srun = _which("srun")
    wrapper = p["bin"] / "srun"
    wrapper.write_text(SRUN_WRAPPER.format(conf=shlex.quote(str(p["conf"])),
                                           srun=shlex.quote(srun)))
    os.chmod(wrapper, 0o755)

    record = {"dir": str(directory), "node": host, "partition": PARTITION, "cpus": cpus,
              "memory_mb": memory, "ports": [ctld_port, slurmd_port], "pids": {}}
    env = _cluster_env(directory)

    def save() -> None:
        p["record"].write_text(json.dumps(record, indent=1))

    try:
        # munged: forks once its socket is ready.
        munged_pid = p["munge"] / "munged.pid"
        _run([_which("munged"), f"--key-file={key}", f"--socket={p['munge_socket']}",
              f"--pid-file={munged_pid}", f"--log-file={p['munge'] / 'munged.log'}",
              f"--seed-file={p['munge'] / 'munged.seed'}"], env)
        _wait(lambda: _read_pid(munged_pid) is not None, 10)
        record["pids"]["munged"] = _read_pid(munged_pid)
        save()
        # slurmctld (-c: start from a clean state), then slurmd; both daemonize.
        for daemon, args in (("slurmctld", ["-c"]), ("slurmd", [])):
            pidfile = p["run"] / f"{daemon}.pid"
            pidfile.unlink(missing_ok=True)
            _run([_which(daemon), "-f", str(p["conf"]), *args], env)
            if not _wait(lambda pf=pidfile, d=daemon: _pid_alive(_read_pid(pf), d), 15):
                raise RuntimeError(f"{daemon} did not start; its log:\n"
                                   f"{_tail(p['log'] / f'{daemon}.log')}")
            record["pids"][daemon] = _read_pid(pidfile)
            save()
        info = _info_from_record(directory, record)
        if not _wait(lambda: node_state(info) == "idle", timeout, interval=0.5):
            raise RuntimeError(
                f"node {host} not idle after {timeout:.0f} s (state {node_state(info)!r});\n"
                f"slurmctld.log:\n{_tail(p['log'] / 'slurmctld.log')}\n"
                f"slurmd.log:\n{_tail(p['log'] / 'slurmd.log')}")
    except BaseException:
        stop(directory)
        raise
    _log(f"cluster up: node {host} ({cpus} CPUs, {memory} MB), partition {PARTITION}, "
         f"SLURM_CONF={p['conf']}")
    return info, True


def stop(directory: Path, timeout: float = 20) -> list[str]:
    """Stop the daemons recorded in ``directory/cluster.json`` (and only those).

    Cancels this cluster's jobs, asks slurmctld to shut itself and slurmd down, stops munged via
    its socket, and sends SIGTERM (then SIGKILL) to a recorded pid that is still there. Returns
    what it stopped.
    """
    directory = Path(directory).resolve()
    record = _read_record(directory)
    if record is None:
        _log(f"nothing recorded in {directory}: nothing to stop")
        return []
    p = _paths(directory)
    env = _cluster_env(directory)
    pids: dict[str, int] = record.get("pids", {})
    running = {name for name, pid in pids.items() if _pid_alive(pid, name)}
    stopped = []
    if "slurmctld" in running:
        jobs = _run(["squeue", "-h", "-o", "%i"], env, check=False).stdout.split()
        if jobs:
            _run(["scancel", *jobs], env, check=False)
        _run(["scontrol", "shutdown"], env, check=False)
    for name in ("slurmd", "slurmctld"):
        pid = pids.get(name)
        if name not in running:
            continue
        if not _wait(lambda pid=pid, name=name: not _pid_alive(pid, name), timeout / 2):
            _log(f"{name} ({pid}) still running after scontrol shutdown: SIGTERM")
            _signal_and_wait(pid, name, timeout / 2)
        stopped.append(name)
    pid = pids.get("munged")
    if "munged" in running:
        with contextlib.suppress(Exception):
            _run([_which("munged"), "-s", f"--socket={p['munge_socket']}"], env, check=False)
        if not _wait(lambda: not _pid_alive(pid, "munged"), timeout / 2):
            _signal_and_wait(pid, "munged", timeout / 2)
        stopped.append("munged")
    p["record"].unlink(missing_ok=True)
    _log(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return stopped


def _signal_and_wait(pid: int, name: str, timeout: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait(lambda: not _pid_alive(pid, name), timeout):
            return


def status(directory: Path) -> dict:
    """What is recorded in ``directory`` and whether it runs (daemon -> alive, node state)."""
    directory = Path(directory).resolve()
    record = _read_record(directory)
    if record is None:
        return {"dir": str(directory), "running": False, "daemons": {}}
    alive = _alive(record)
    info = _info_from_record(directory, record)
    state = node_state(info) if alive.get("slurmctld") else ""
    return {"dir": str(directory), "running": all(alive.values()) and bool(alive),
            "daemons": {n: {"pid": record["pids"][n], "alive": a} for n, a in alive.items()},
            "node": record["node"], "node_state": state, "partition": record["partition"],
            "conf": str(info.conf)}


@contextlib.contextmanager
def local_slurm(directory: Path, *, install: bool = True) -> Iterator[ClusterInfo]:
    """Start the cluster (if this directory's is not running yet) and stop what was started."""
    info, started = start(directory, install=install)
    try:
        yield info
    finally:
        if started:
            stop(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--dir", type=Path, default=Path("/tmp/kdseg-slurm"),
                        help="scratch directory for config, state and logs [%(default)s]")
    parser.add_argument("--no-install", action="store_true",
                        help="do not apt-get install missing SLURM packages")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            t0 = time.monotonic()
            info, started = start(args.dir, install=not args.no_install)
            print(f"# {'started' if started else 'already running'} in "
                  f"{time.monotonic() - t0:.1f} s; to use it:")
            print(f"export SLURM_CONF={shlex.quote(str(info.conf))}")
            print(f"export PATH={shlex.quote(str(_paths(info.dir)['bin']))}:\"$PATH\"")
            print(f"export KDSEG_SLURM_PARTITION={info.partition}")
        elif args.action == "stop":
            stop(args.dir)
        else:
            print(json.dumps(status(args.dir), indent=1))
    except ClusterUnavailable as err:
        print(f"local_slurm: cannot run SLURM here: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
