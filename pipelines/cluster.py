"""Options for running dpipe on a Flink cluster, checked when the job starts rather than at the first failure.

A Flink job fails late and far away: a missing job server jar after the pipeline is built, a stream without
checkpoints that never deletes a spool segment (on portable Flink, bundle finalization waits for a completed
checkpoint), SDK workers that cannot import dpipe. `check_flink` turns each of those into one line that says
what to do (`pipelines.validation.UsageError`, exit 2). `FlinkJobOptions` declares the Flink runner's own
(Java-side) options dpipe's runbook uses, so the strict option parser accepts them.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request

from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    JobServerOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.utils.subprocess_server import JavaJarServer
from apache_beam.version import __version__ as BEAM_VERSION

from pipelines.validation import UsageError

FLINK_VERSIONS = tuple(FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS)
"""The Flink minor versions Beam publishes a job server for; the cluster's must be one of them."""
REMOTE_ENVIRONMENTS = ("EXTERNAL", "DOCKER", "PROCESS")
JAR_PROBE_TIMEOUT_S = 10.0


class FlinkJobOptions(PipelineOptions):
    """The Flink runner's job options (FlinkPipelineOptions in Java) that runbooks/flink.md uses.

    Beam's Python SDK does not declare them (the job server describes them at submission), so without this
    dpipe's parser would reject them as unknown. Unset ones are not sent: the cluster's config.yaml decides.
    """

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--checkpointing_interval", type=int, default=None,
                            help="ms between checkpoints; a stream needs it (finalization waits for checkpoints)")
        parser.add_argument("--checkpointing_mode", choices=("EXACTLY_ONCE", "AT_LEAST_ONCE"), default=None)
        parser.add_argument("--checkpoint_timeout_millis", type=int, default=None)
        parser.add_argument("--min_pause_between_checkpoints", type=int, default=None)
        parser.add_argument("--externalized_checkpoints_enabled", action="store_true", default=None)
        parser.add_argument("--retain_externalized_checkpoints_on_cancellation", action="store_true", default=None)
        parser.add_argument("--savepoint_path", default=None, help="restore the stream from this savepoint")
        parser.add_argument("--allow_non_restored_state", action="store_true", default=None)
        parser.add_argument("--state_backend", choices=("rocksdb", "filesystem"), default=None)
        parser.add_argument("--state_backend_storage_path", default=None)
        parser.add_argument("--max_bundle_size", type=int, default=None)
        parser.add_argument("--max_bundle_time_mills", type=int, default=None)
        parser.add_argument("--shutdown_sources_after_idle_ms", type=int, default=None,
                            help="let a stopped source end the job (with checkpoints Beam keeps it alive)")


def is_flink(runner: str | None) -> bool:
    """Beam resolves `flink`, `FlinkRunner` and the class path alike; so does this."""
    name = (runner or "").rsplit(".", 1)[-1].lower()
    return name in ("flink", "flinkrunner")


def check_flink_version(beam_args: list[str]) -> None:
    """Before Beam's parser sees it: an unsupported --flink_version is one line, not argparse's usage page."""
    for i, arg in enumerate(beam_args):
        if arg == "--flink_version" and i + 1 < len(beam_args):
            version = beam_args[i + 1]
        elif arg.startswith("--flink_version="):
            version = arg.split("=", 1)[1]
        else:
            continue
        if version not in FLINK_VERSIONS:
            raise UsageError(f"--flink_version {version}: Beam {BEAM_VERSION} runs on Flink "
                             f"{', '.join(FLINK_VERSIONS)}; give your cluster's minor version (the job server jar "
                             "must match it)")


def check_flink(options: PipelineOptions) -> None:
    """Both entry points, with --runner FlinkRunner: the job server jar and where the SDK workers run."""
    if not is_flink(options.view_as(StandardOptions).runner):
        return
    portable = options.view_as(PortableOptions)
    flink = options.view_as(FlinkRunnerOptions)
    remote = flink.flink_master not in ("[auto]", "[local]")
    environment = (portable.environment_type or ("DOCKER" if remote else "LOOPBACK")).upper()
    if remote and environment not in REMOTE_ENVIRONMENTS:
        raise UsageError(f"--environment_type {environment} runs the SDK workers in this process, which the "
                         f"TaskManagers of {flink.flink_master} cannot reach: use EXTERNAL (a worker pool beside "
                         "each TaskManager, templates/flink/) or DOCKER with the dpipe SDK image")
    if environment == "DOCKER" and not (portable.environment_config or
                                        portable.lookup_environment_option("docker_container_image") or
                                        options.view_as(WorkerOptions).sdk_container_image):
        raise UsageError("--environment_type DOCKER needs the dpipe SDK image (Beam's own has no dpipe): "
                         "build it with `make sdk-image` and pass --environment_config IMAGE")
    if environment == "EXTERNAL" and not (portable.environment_config or
                                          portable.lookup_environment_option("external_service_address")):
        raise UsageError("--environment_type EXTERNAL needs --environment_config HOST:PORT, the worker pool "
                         "beside each TaskManager (localhost:50000 in templates/flink/)")
    if not portable.job_endpoint:  # with --job_endpoint a job server runs apart and this one needs no jar
        check_job_server_jar(options)


def check_stream(options: PipelineOptions, source: str, spool: str, spool_url: str | None = None,
                 spool_shared: bool = False) -> None:
    """pipelines.stream on Flink: a source Flink runs, a spool its workers reach, checkpoints on (the spool is
    acknowledged on them)."""
    if not is_flink(options.view_as(StandardOptions).runner):
        return
    if source == "pubsub":
        raise UsageError("--source pubsub does not run on Flink (Beam's Python Pub/Sub IO runs on the DirectRunner "
                         "and Dataflow only): stream from the gateway's spool on Flink")
    check_spool(spool, spool_url, spool_shared)
    interval = options.view_as(FlinkJobOptions).checkpointing_interval
    if not interval or interval <= 0:
        raise UsageError("a stream on Flink needs --checkpointing_interval MS (e.g. 10000): the spool deletes a "
                         "segment only when a completed checkpoint finalizes it, so without checkpoints it never "
                         "does and the gateway fills it")


def check_spool(spool: str, spool_url: str | None, spool_shared: bool) -> None:
    """The spool is read by the SDK workers beside the TaskManagers, not on this host: a URL of Beam's
    filesystems the gateway ships sealed segments to (`--spool_url`), or a mount every worker sees at the same
    absolute path (`--spool_shared`). A plain local path is refused (docs/architecture.md, "Where the spool
    lives")."""
    from connectors.spool_store import is_url

    if spool_url is not None:
        if not is_url(spool_url):
            raise UsageError(f"--spool_url {spool_url}: give a URL of Beam's filesystems (s3://bucket/spool)")
        return
    if not spool_shared:
        raise UsageError(f"--spool {spool}: on Flink the TaskManagers cannot read this host's disk: pass --spool_url "
                         "s3://BUCKET/spool (the gateway ships sealed segments there) or --spool_shared for a mount "
                         "every TaskManager sees at this path")
    if not os.path.isabs(spool):
        raise UsageError(f"--spool {spool}: with --spool_shared give the absolute path of the mount the gateway and "
                         "every TaskManager's worker share")


def job_server_coordinates(version: str) -> str:
    """Maven coordinates of the jar FlinkRunner downloads when --flink_job_server_jar is not given."""
    return f"{JavaJarServer.BEAM_GROUP_ID}:beam-runners-flink-{version}-job-server:{BEAM_VERSION}"


def default_job_server_url(version: str) -> str:
    """Where Beam downloads the jar from: the same call FlinkJarJobServer makes."""
    return JavaJarServer.path_to_beam_jar(f":runners:flink:{version}:job-server:shadowJar")


def check_job_server_jar(options: PipelineOptions) -> None:
    """The jar FlinkRunner will start: a local file, Beam's jar cache, or a URL that answers (HEAD)."""
    flink = options.view_as(FlinkRunnerOptions)
    jar = flink.flink_job_server_jar or default_job_server_url(flink.flink_version)
    cache = options.view_as(JobServerOptions).jar_cache_dir or JavaJarServer.JAR_CACHE
    if os.path.isfile(jar) or os.path.isfile(os.path.join(cache, os.path.basename(jar))):
        return
    if not urllib.parse.urlparse(jar).scheme:
        reason: str | None = "no such file"
    else:  # Beam falls back to Google's mirror of Maven Central; so does the check
        mirror = jar.replace(JavaJarServer.MAVEN_CENTRAL_REPOSITORY, JavaJarServer.GOOGLE_MAVEN_MIRROR)
        reason = _unreachable(jar)
        if reason is not None and mirror != jar and _unreachable(mirror) is None:
            return
    if reason is None:
        return
    raise UsageError(f"no Flink job server jar: {jar} ({reason}); it is "
                     f"{job_server_coordinates(flink.flink_version)} on Maven Central: download it and pass "
                     "--flink_job_server_jar PATH, or put it in " + cache)


def _unreachable(url: str) -> str | None:
    """Why `url` cannot be fetched (a HEAD request), or None when it can."""
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        return None  # gs://, s3://...: Beam's filesystems fetch it; they are checked by their own use
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=JAR_PROBE_TIMEOUT_S):
            return None
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))
