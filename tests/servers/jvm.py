"""What the test servers that run on the JVM share: a Maven-resolved, cached classpath, finding java, and
children that die with the test process."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any


def build_classpath(pom: Path, out: Path, what: str, mvn: str | None = None, timeout: float = 900) -> str:
    """The runtime classpath of a pom, resolved by Maven and cached in the file `out`.

    The cached file is reused while it is newer than the pom and every jar it names still exists
    (a wiped ~/.m2 resolves again). Raises RuntimeError with Maven's output when resolution fails.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and out.stat().st_mtime > pom.stat().st_mtime:
        classpath = out.read_text().strip()
        if classpath and all(Path(p).exists() for p in classpath.split(os.pathsep)):
            return classpath

    mvn = mvn or shutil.which("mvn")
    if not mvn:
        raise RuntimeError(f"mvn is not on PATH: it is needed to resolve the {what} classpath from {pom}")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # parallel workers: write, then rename
    cmd = [mvn, "-q", "-B", "-f", str(pom), "dependency:build-classpath", f"-Dmdep.outputFile={tmp}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{' '.join(cmd)} timed out after {timeout:.0f} s:\n{e.stdout or ''}{e.stderr or ''}") from e
    if proc.returncode != 0 or not tmp.exists() or not tmp.read_text().strip():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}".rstrip())
    classpath = tmp.read_text().strip()
    os.replace(tmp, out)
    return classpath


def find_java(home_var: str, tool: str = "java") -> str | None:
    """`$<home_var>`, then $JAVA_HOME, then PATH."""
    for var in (home_var, "JAVA_HOME"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / tool).exists():
            return str(Path(home) / "bin" / tool)
    return shutil.which(tool)


def pdeathsig_preexec() -> Any:
    """A preexec_fn that makes the child get SIGTERM when the thread that started it dies (Linux).

    So no server outlives a killed pytest. libc's prctl is looked up here, in the parent: the child
    only calls it. The signal follows the starting *thread*: start the server from the test's main
    thread (fixtures do), not from a short-lived helper thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG

    return preexec


def stop_process(proc: subprocess.Popen | None, grace: float = 20.0) -> int | None:
    """SIGTERM a child by its PID, SIGKILL it after `grace` seconds; its exit code (None if there was none)."""
    if proc is None:
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=30)
    return proc.returncode
