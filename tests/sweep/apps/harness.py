"""Helpers for sweeper tests: run the tiny Hydra app as a real process, read its study, and
start a throwaway PostgreSQL server."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Optional

REPO = Path(__file__).resolve().parents[3]
APP = Path(__file__).with_name("sleep_app.py")


def app_env(sweep_root: Path, **extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["SWEEP_DIR"] = str(sweep_root)
    env["MARKER_DIR"] = str(sweep_root)
    env["TRAINLOG"] = str(sweep_root / "trainlog.txt")
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(extra)
    return env


def run_app(args: List[str], sweep_root: Path, *, timeout: float = 120, check: bool = True,
            **env: str) -> subprocess.CompletedProcess:
    """Run ``sleep_app.py -m <args>`` with its sweep dirs under ``sweep_root``."""
    sweep_root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, str(APP), "-m", *args], cwd=sweep_root,
                          env=app_env(sweep_root, **env), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"sweep failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_app(args: List[str], sweep_root: Path, **env: str) -> subprocess.Popen:
    """Start the app in its own process group (so a test can kill the whole sweep)."""
    sweep_root.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, str(APP), "-m", *args], cwd=sweep_root,
                            env=app_env(sweep_root, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if time.time() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.1)


def trainlog(sweep_root: Path) -> Counter:
    """How many times each config really trained (one line per task call)."""
    path = sweep_root / "trainlog.txt"
    if not path.exists():
        return Counter()
    return Counter(line.split(" ", 1)[1].strip() for line in path.read_text().splitlines())


def load_study(sweep_root: Path, name: str = "test", storage: Optional[str] = None):
    import optuna

    url = storage or f"sqlite:///{sweep_root / name / 'optuna.db'}"
    return optuna.load_study(study_name=name, storage=url)


# -- PostgreSQL --------------------------------------------------------------------------------


def pg_bin() -> Optional[Path]:
    """Directory of initdb/pg_ctl (PATH, then Debian's /usr/lib/postgresql/<v>/bin)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(d, "initdb")):
            return Path(d)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(password: str, user: str = "coordsweep") -> Iterator[str]:
    """A PostgreSQL cluster in a temporary directory on 127.0.0.1 with password auth; yields
    its URL. As root the cluster runs as the ``postgres`` system user (initdb refuses root)."""
    bindir = pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (no initdb; `make test` installs it)")
    tmp = Path(tempfile.mkdtemp(prefix="coordsweep-pg-"))
    prefix: List[str] = []
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    pwfile = tmp / "pw"
    pwfile.write_text(password + "\n")
    if prefix:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
    data, port = tmp / "data", free_port()
    run = lambda *cmd: subprocess.run(prefix + [str(c) for c in cmd], check=True,  # noqa: E731
                                      capture_output=True, text=True, timeout=120)
    run(bindir / "initdb", "-D", data, "-U", user, "--auth=scram-sha-256", f"--pwfile={pwfile}",
        "-E", "UTF8", "--no-sync")
    pwfile.unlink()
    run(bindir / "pg_ctl", "-D", data, "-l", tmp / "server.log", "-w", "-t", "60", "-o",
        f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        yield f"postgresql://{user}:{password}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                 "stop"], capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
