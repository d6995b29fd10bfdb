"""A real HDFS with WebHDFS for tests: Hadoop's mini cluster in a java subprocess on 127.0.0.1.

No Docker, no Hadoop install: :func:`build_classpath` resolves ``tests/servers/hdfs/pom.xml``
(``org.apache.hadoop:hadoop-client-minicluster`` and two small jars) with
``mvn dependency:build-classpath`` and caches the result; :class:`HdfsServer` runs
``org.apache.hadoop.mapreduce.MiniHadoopClusterManager -nomr -format`` with one NameNode and one
DataNode, all of it bound to 127.0.0.1 on ports chosen at run time, data under a work dir.
It starts in about 4 s (Java 17, heap capped at 512 MB, ~250 MB resident). Hadoop 3.4 does not run on
Java 23+ (Subject.getSubject is gone): point $DPIPE_HDFS_JAVA_HOME at a Java 17 when $JAVA_HOME is newer.

Beam's Python HDFS filesystem speaks WebHDFS (the ``hdfs`` PyPI package) to the NameNode's HTTP
port, which redirects each read and write to the DataNode's HTTP port (127.0.0.1 here too).
Beam paths: ``hdfs://dir/file`` means the HDFS path ``/dir/file`` -- the first component is *not* a
host (the host and port come from ``--hdfs_host``/``--hdfs_port``); with ``--hdfs_full_urls`` the
form is ``hdfs://anyname/dir/file`` instead, the name being ignored. :meth:`HdfsServer.beam_path`
builds the first form.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.servers import free_port, jvm

HERE = Path(__file__).resolve().parent
POM = HERE / "hdfs" / "pom.xml"
CLASSPATH_FILE = "hdfs-classpath.txt"
MAIN_CLASS = "org.apache.hadoop.mapreduce.MiniHadoopClusterManager"
HOST = "127.0.0.1"

JVM_OPTIONS = [
    "-Xms64m",
    "-Xmx512m",  # NameNode and DataNode share this JVM; small, as other servers may run beside it
    "-XX:+UseSerialGC",
    "-XX:-OmitStackTraceInFastThrow",
    "-Djava.awt.headless=true",
    "-Dfile.encoding=UTF-8",
    "-Djava.net.preferIPv4Stack=true",
]

# Hadoop settings passed with -D. MiniDFSCluster already binds the DataNode to 127.0.0.1 on
# ephemeral ports and sets dfs.datanode.hostname=127.0.0.1 (so WebHDFS redirects go to
# http://127.0.0.1:<datanode http port>/...), replication 1 and no safe-mode extension; they are
# repeated here so the intent is visible and survives other Hadoop versions.
DEFAULT_SETTINGS: dict[str, Any] = {
    "dfs.permissions.enabled": "false",  # any --hdfs_user may write anywhere
    "dfs.replication": 1,
    "dfs.namenode.safemode.extension": 0,
    "dfs.namenode.safemode.min.datanodes": 0,
    "dfs.datanode.hostname": HOST,
    "dfs.client.use.datanode.hostname": "false",
    "dfs.datanode.address": f"{HOST}:0",
    "dfs.datanode.http.address": f"{HOST}:0",
    "dfs.datanode.ipc.address": f"{HOST}:0",
    "dfs.webhdfs.enabled": "true",
}

_BIND_FAILURE = ("BindException", "Address already in use", "Port in use")


def default_cache_dir() -> Path:
    """Where the classpath file is kept ($DPIPE_HDFS_CACHE or ~/.cache/dpipe/hdfs)."""
    env = os.environ.get("DPIPE_HDFS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dpipe" / "hdfs"


def build_classpath(cache_dir: Path, pom: Path = POM, mvn: str | None = None, timeout: float = 900) -> str:
    """The mini cluster's runtime classpath from the pom, resolved by Maven and cached in cache_dir."""
    return jvm.build_classpath(pom, Path(cache_dir) / CLASSPATH_FILE, "HDFS", mvn, timeout)


def find_java() -> str | None:
    """$DPIPE_HDFS_JAVA_HOME, then $JAVA_HOME, then PATH. Hadoop 3.4 runs on Java 17 (the default here)."""
    return jvm.find_java("DPIPE_HDFS_JAVA_HOME")


class HdfsServer:
    """One NameNode and one DataNode (MiniDFSCluster) in a java subprocess on 127.0.0.1.

    >>> server = HdfsServer()
    >>> server.start(tmp_path / "hdfs")                    # doctest: +SKIP
    >>> PipelineOptions(server.beam_options())             # doctest: +SKIP
    >>> server.beam_path("/logs/day1.log")                 # doctest: +SKIP
    'hdfs://logs/day1.log'
    >>> server.stop()                                      # doctest: +SKIP

    or ``with HdfsServer(workdir=tmp_path / "hdfs") as server: ...`` (starts on enter if not started).
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        user: str | None = None,
        datanodes: int = 1,
        cache_dir: Path | None = None,
        classpath: str | None = None,
        java: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.workdir = Path(workdir) if workdir else None
        self.user = user or getpass.getuser()
        self.datanodes = datanodes
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.classpath = classpath
        self.java = java
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.host = HOST
        self.http_port: int | None = None  # NameNode HTTP: WebHDFS at /webhdfs/v1
        self.rpc_port: int | None = None  # NameNode RPC: what Java clients use (hdfs://host:port)
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    # -- addresses -------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def url(self) -> str:
        """The NameNode's RPC address as a Hadoop URI (for Java clients; Beam's Python HDFS does not use it)."""
        return f"hdfs://{self.host}:{self.rpc_port}"

    @property
    def webhdfs_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def beam_options(self) -> list[str]:
        """The Beam flags that reach this server (paths then look like ``hdfs://dir/file``)."""
        return ["--hdfs_host", self.host, "--hdfs_port", str(self.http_port), "--hdfs_user", self.user]

    @staticmethod
    def beam_path(path: str) -> str:
        """The Beam URL of an absolute HDFS path: '/a/b' -> 'hdfs://a/b' (without --hdfs_full_urls)."""
        return "hdfs://" + path.lstrip("/")

    def client(self) -> Any:
        """An ``hdfs.InsecureClient`` (the library Beam uses) on this server's WebHDFS."""
        import hdfs

        return hdfs.InsecureClient(self.webhdfs_url, user=self.user)

    # -- life cycle ------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, workdir: Path | None = None, timeout: float = 180) -> HdfsServer:
        """Start the cluster and wait until WebHDFS lists / and a DataNode is live (safe mode off).

        Raises RuntimeError with the last 50 log lines when it exits or is not ready in `timeout` s.
        """
        if self.is_running():
            return self
        if workdir is not None:
            self.workdir = Path(workdir)
        if self.workdir is None:
            raise ValueError("HdfsServer.start needs a workdir")
        deadline = time.monotonic() + timeout
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.classpath = self.classpath or build_classpath(self.cache_dir)
        java = self.java or find_java()
        if not java:
            raise RuntimeError("no java found ($DPIPE_HDFS_JAVA_HOME, $JAVA_HOME or PATH): HDFS needs Java 17")
        for attempt in range(3):  # a port picked free may be taken before the JVM binds it: retry on that
            self._launch(java, attempt)
            try:
                self._wait_ready(deadline)
                return self
            except RuntimeError:
                bind_failed = any(s in self._read_log() for s in _BIND_FAILURE)
                self.stop()
                if not bind_failed or attempt == 2 or time.monotonic() >= deadline:
                    raise
        raise AssertionError("unreachable")

    def _launch(self, java: str, attempt: int) -> None:
        assert self.workdir is not None and self.classpath is not None
        self.rpc_port = free_port()
        self.http_port = free_port(frozenset({self.rpc_port}))
        run = self.workdir / (f"run{attempt}" if attempt else ".")
        tmp = run / "tmp"
        dfs = run / "dfs"
        for d in (tmp, dfs):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        settings = {
            "hdfs.minidfs.basedir": str(dfs),  # name and data dirs
            "hadoop.tmp.dir": str(tmp / "hadoop"),
            **self.settings,
        }
        cmd = [
            java,
            *JVM_OPTIONS,
            f"-Djava.io.tmpdir={tmp}",
            "-cp",
            self.classpath,
            MAIN_CLASS,
            "-nomr",
            "-format",
            "-datanodes",
            str(self.datanodes),
            "-nnport",
            str(self.rpc_port),
            "-nnhttpport",
            str(self.http_port),
            "-writeConfig",
            str(run / "hdfs-site-effective.xml"),
        ]
        for key, value in settings.items():
            cmd += ["-D", f"{key}={value}"]
        self.log_path = run / "hdfs.log"
        self._log = self.log_path.open("wb")
        self._log.write((" ".join(cmd) + "\n").encode())
        self._log.flush()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HADOOP_", "HDFS_", "YARN_"))}
        self._proc = subprocess.Popen(
            cmd,
            cwd=run,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=jvm.pdeathsig_preexec(),
        )

    def _get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.webhdfs_url + path, timeout=5) as r:
            return json.loads(r.read())

    def _ready(self) -> bool:
        try:
            listing = self._get_json(f"/webhdfs/v1/?op=LISTSTATUS&user.name={self.user}")
            if "FileStatuses" not in listing:
                return False
            state = self._get_json("/jmx?qry=Hadoop:service=NameNode,name=FSNamesystemState")["beans"]
            info = self._get_json("/jmx?qry=Hadoop:service=NameNode,name=NameNodeInfo")["beans"]
        except (OSError, ValueError, KeyError):  # not up yet, or an HTTP error page
            return False
        if not state or not info:
            return False
        return (
            state[0].get("NumLiveDataNodes", 0) >= self.datanodes
            and state[0].get("FSState") == "Operational"
            and not info[0].get("Safemode")
        )

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"HDFS mini cluster exited with {self._proc.returncode} before it was ready; "
                    f"last log lines ({self.log_path}):\n{self.log_tail()}"
                )
            if self._ready():
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"HDFS mini cluster not ready on {self.webhdfs_url} in time; "
            f"last log lines ({self.log_path}):\n{self.log_tail()}"
        )

    def _read_log(self) -> str:
        if self._log:
            self._log.flush()
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return ""

    def log_tail(self, lines: int = 50) -> str:
        return "\n".join(self._read_log().splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the JVM by its PID, SIGKILL after 20 s. Keeps the work dir (and its log)."""
        proc, self._proc = self._proc, None
        jvm.stop_process(proc)
        if self._log:
            self._log.close()
            self._log = None

    def __enter__(self) -> HdfsServer:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort; tests should call stop() or use a context manager
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.stop()
