"""Throwaway services for the tracking integration tests: a PostgreSQL cluster and an MLflow server.

Both are context managers that skip the calling test (``pytest.skip`` with the precise reason)
when their service cannot start on this machine, and stop and remove what they started on exit:

* :func:`postgres` runs ``initdb`` in a fresh temporary directory and starts the cluster on
  127.0.0.1 (a free port; its unix socket in the same directory) and yields a
  ``postgresql://`` DSN of a new database. PostgreSQL refuses to run as root, so as root the
  cluster is owned by an unprivileged system user (``postgres`` when it exists, else one created
  with ``useradd``); missing PostgreSQL binaries are installed with apt-get, root only.
* :func:`mlflow_server` runs the venv's ``mlflow server`` on 127.0.0.1 (a free port), waits for
  ``GET /health`` and yields its ``http://`` URL; SIGTERM on exit, SIGKILL if it lingers.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

MLFLOW = Path(sys.executable).parent / "mlflow"
_PG_USER_CANDIDATES = ("postgres", "kdseg-pg")
_PG_DB_USER = "mlflow"  # the cluster's superuser, trusted on 127.0.0.1 and the socket only


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return f"(no log at {path})"


# -- PostgreSQL ------------------------------------------------------------------------------------


def _pg_bindir() -> Path | None:
    """Directory with initdb/pg_ctl: PATH first, then Debian's /usr/lib/postgresql/<ver>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(candidates[-1]).parent if candidates else None


def _install_postgres() -> str | None:
    """apt-get install postgresql (root only); None on success, else why not."""
    if os.geteuid() != 0:
        return "not root, so PostgreSQL cannot be installed with apt-get"
    if shutil.which("apt-get") is None:
        return "apt-get not found"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
    proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:  # maybe stale package lists: update once and retry
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
        proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return f"apt-get install postgresql failed: {(proc.stdout + proc.stderr)[-1500:]}"
    return None


def _unprivileged_user() -> pwd.struct_passwd:
    """The system user owning the cluster when we are root (created with useradd if needed)."""
    for name in _PG_USER_CANDIDATES:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    name = _PG_USER_CANDIDATES[-1]
    proc = subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                           "/usr/sbin/nologin", name], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"PostgreSQL refuses to run as root and `useradd {name}` failed: "
                    f"{proc.stderr.strip()}")
    return pwd.getpwnam(name)


@contextlib.contextmanager
def postgres(parent: Path | None = None, dbname: str = "mlflow") -> Iterator[str]:
    """Start a throwaway PostgreSQL cluster; yield ``postgresql://mlflow@127.0.0.1:<port>/<db>``.

    The cluster lives in a new temporary directory under ``parent`` (default: the system temp
    directory; as root, ``parent`` must be traversable by the cluster's unprivileged owner, so not
    pytest's 0700 ``/tmp/pytest-of-root``). It is stopped and deleted on exit.
    """
    bindir = _pg_bindir()
    if bindir is None:
        why = _install_postgres()
        bindir = _pg_bindir()
        if bindir is None:
            pytest.skip(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {why}")
    as_user: dict[str, object] = {}
    if os.geteuid() == 0:
        owner = _unprivileged_user()
        as_user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    root = Path(tempfile.mkdtemp(prefix="kdseg-pg-", dir=parent))
    data, log = root / "data", root / "postgres.log"
    if as_user:
        os.chown(root, int(as_user["user"]), int(as_user["group"]))  # type: ignore[arg-type]
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    env.pop("PGDATA", None)

    def run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(bindir / cmd[0]), *cmd[1:]], cwd=root, env=env,
                              capture_output=True, text=True, timeout=timeout, **as_user)

    port = free_port()
    started = False
    try:
        proc = run("initdb", "-D", str(data), "-U", _PG_DB_USER, "--auth=trust", "--no-locale",
                   "--encoding=UTF8", "--no-sync")
        if proc.returncode != 0:
            pytest.skip(f"initdb failed in {root}: {(proc.stdout + proc.stderr)[-1500:]}")
        # default durability settings: the concurrency test measures a realistic server
        options = (f"-c listen_addresses=127.0.0.1 -c port={port}"
                   f" -c unix_socket_directories={root} -c max_connections=200")
        proc = run("pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
                   "start")
        started = proc.returncode == 0
        if not started:
            pytest.skip(f"PostgreSQL did not start on 127.0.0.1:{port}: "
                        f"{(proc.stdout + proc.stderr)[-800:]}\n{_tail(log, 1500)}")
        proc = run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", _PG_DB_USER, dbname)
        if proc.returncode != 0:
            pytest.skip(f"createdb {dbname} failed: {(proc.stdout + proc.stderr)[-1500:]}")
        yield f"postgresql://{_PG_DB_USER}@127.0.0.1:{port}/{dbname}"
    finally:
        if started:
            stop = run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop")
            if stop.returncode != 0:  # immediate shutdown as a last resort
                run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


# -- MLflow server ---------------------------------------------------------------------------------


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop_group(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM the server's process group (uvicorn and its workers); SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts_dir: Path, *, workers: int = 2,
                  startup_timeout_s: float = 180) -> Iterator[str]:
    """Run ``mlflow server`` on 127.0.0.1:<free port>; yield ``http://127.0.0.1:<port>``.

    The server's output goes to ``<artifacts_dir>/../mlflow-server.log`` (named in skip
    messages). Health is ``GET /health`` returning 200 (about 8 s with SQLite; a fresh
    PostgreSQL backend first runs MLflow's migrations).
    """
    if not MLFLOW.is_file():
        pytest.skip(f"{MLFLOW} not found: the venv has no mlflow")
    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    log = artifacts_dir.parent / "mlflow-server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(MLFLOW), "server", "--backend-store-uri", backend_uri,
           "--artifacts-destination", str(artifacts_dir.resolve()),
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=artifacts_dir.parent, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not _healthy(url):
            if proc.poll() is not None:
                pytest.skip(f"mlflow server exited with status {proc.returncode} before "
                            f"{url}/health answered; log {log}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                pytest.skip(f"mlflow server at {url} not healthy after {startup_timeout_s:g} s; "
                            f"log {log}:\n{_tail(log)}")
            time.sleep(0.5)
        yield url
    finally:
        _stop_group(proc)
