"""templates/flink/ parses, its three Flink configurations agree, its versions follow the pins, and every dpipe
command line in it is accepted by the option checks a real start would run (pipelines/cluster.py)."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import yaml
from apache_beam.version import __version__ as BEAM_VERSION

from pipelines import backfill, stream
from pipelines.cluster import FLINK_VERSIONS, check_stream
from pipelines.options import beam_options

ROOT = Path(__file__).resolve().parent.parent
FLINK = ROOT / "templates" / "flink"
CONFIG = yaml.safe_load((FLINK / "config.yaml").read_text())
K8S = list(yaml.safe_load_all((FLINK / "flinkdeployment.yaml").read_text()))
COMPOSE = yaml.safe_load((FLINK / "docker-compose.yaml").read_text())


def flat(config: dict[str, Any]) -> dict[str, str]:
    """Flink's keys as strings (config.yaml may nest them; the operator and FLINK_PROPERTIES take strings)."""
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in config.items()}


def check_command(argv: list[str]) -> None:
    """What `python -m <entry point> ARGS` checks before it builds anything; raises on a mistake."""
    module, args = argv[2], argv[3:]
    if module == "pipelines.stream":
        parsed, beam_args = stream.parse_args(args)
        check_stream(stream.stream_options(beam_args, parsed.source), parsed.source, parsed.spool, parsed.spool_url,
                     parsed.spool_shared)
    elif module == "pipelines.backfill":
        beam_options(backfill.parse_args(args)[1])
    else:
        assert module == "pipelines.gateway" and "--host" in args and "0.0.0.0" in args, "reachable from other hosts"


def commands(containers: list[dict[str, Any]]) -> list[list[str]]:
    """The `python -m ...` command lines of Kubernetes containers (command + args) or compose services
    (entrypoint + command)."""
    argvs = ([a for key in ("entrypoint", "command", "args") if isinstance(c.get(key), list) for a in c[key]]
             for c in containers)
    return [argv for argv in argvs if argv[:2] == ["python", "-m"]]


def test_the_flink_config_sets_checkpoints_state_and_restarts() -> None:
    assert CONFIG["execution.checkpointing.interval"] == "10 s"
    assert CONFIG["execution.checkpointing.externalized-checkpoint-retention"] == "RETAIN_ON_CANCELLATION"
    assert CONFIG["execution.checkpointing.savepoint-dir"].startswith("file:///flink-data/")
    assert CONFIG["state.backend.type"] == "rocksdb" and CONFIG["restart-strategy.type"] == "exponential-delay"


def test_the_flinkdeployment_has_the_job_server_and_the_worker_pool_sidecar() -> None:
    deployment = next(d for d in K8S if d["kind"] == "FlinkDeployment")
    spec = deployment["spec"]
    assert deployment["apiVersion"] == "flink.apache.org/v1beta1" and "job" not in spec, "a session cluster"
    flink = spec["flinkVersion"].removeprefix("v").replace("_", ".")
    assert flink in FLINK_VERSIONS and spec["image"].startswith(f"flink:{flink}-")
    memory = {"jobmanager.memory.process.size": spec["jobManager"]["resource"]["memory"],
              "taskmanager.memory.process.size": spec["taskManager"]["resource"]["memory"]}  # the operator's way
    assert {k: memory.get(k) or spec["flinkConfiguration"][k] for k in CONFIG} == flat(CONFIG)
    sidecar = spec["jobManager"]["podTemplate"]["spec"]["containers"][0]
    assert sidecar["image"] == f"apache/beam_flink{flink}_job_server:{BEAM_VERSION}"
    assert "--flink-master=localhost:8081" in sidecar["args"] and "--job-host=0.0.0.0" in sidecar["args"]
    pool = spec["taskManager"]["podTemplate"]["spec"]["containers"][0]
    assert pool["args"] == ["--worker_pool"] and pool["ports"][0]["containerPort"] == 50000
    service = next(d for d in K8S if d["kind"] == "Service" and d["metadata"]["name"] == "dpipe-beam-job-server")
    assert service["spec"]["selector"] == {"app": deployment["metadata"]["name"], "component": "jobmanager"}

    pods = [d["spec"]["template"]["spec"]["containers"] for d in K8S if d["kind"] in ("Deployment", "Job")]
    argvs = [argv for containers in pods for argv in commands(containers)]
    assert {argv[2] for argv in argvs} == {"pipelines.gateway", "pipelines.stream"}
    for argv in argvs:
        check_command(argv)
        assert "--flink_version" not in argv or argv[argv.index("--flink_version") + 1] == flink


def test_the_compose_file_runs_a_jobmanager_two_taskmanagers_the_job_server_and_the_gateway() -> None:
    services = COMPOSE["services"]
    assert {"jobmanager", "taskmanager-1", "taskmanager-2", "jobserver", "gateway", "stream"} <= set(services)
    for n in (1, 2):
        assert services[f"worker-pool-{n}"]["network_mode"] == f"service:taskmanager-{n}", "localhost:50000"
        assert services[f"taskmanager-{n}"]["command"] == "taskmanager"
    properties = yaml.safe_load(services["jobmanager"]["environment"]["FLINK_PROPERTIES"])
    assert {k: properties[k] for k in CONFIG} == CONFIG
    flink = services["jobmanager"]["image"].split(":")[1].split("-")[0]
    assert services["jobserver"]["image"] == f"apache/beam_flink{flink}_job_server:{BEAM_VERSION}"
    argvs = commands(list(services.values()))
    assert {argv[2] for argv in argvs} == {"pipelines.gateway", "pipelines.stream", "pipelines.backfill"}
    for argv in argvs:
        check_command(argv)


def test_a_command_the_checks_refuse_is_refused_here_too() -> None:
    """The test's own harness: a template command without checkpoints would fail it."""
    argv = commands([COMPOSE["services"]["stream"]])[0]
    argv.remove("--checkpointing_interval")
    argv.remove("10000")
    try:
        check_command(argv)
    except Exception as err:
        assert "--checkpointing_interval" in str(err)
    else:
        raise AssertionError("a stream without checkpoints was accepted")


def test_the_sdk_image_follows_the_pins_and_make_says_where_docker_is_missing() -> None:
    dockerfile = (FLINK / "sdk.Dockerfile").read_text()
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    beam_pin = next(d for d in pins["dependencies"] if d.startswith("apache-beam")).split("==")[1]
    assert re.search(rf"^ARG BEAM_VERSION={re.escape(beam_pin)}$", dockerfile, re.M) and beam_pin == BEAM_VERSION
    python = pins["requires-python"].split(",")[0].removeprefix(">=")
    assert f"FROM apache/beam_python{python}_sdk:${{BEAM_VERSION}}" in dockerfile
    assert "RUN pip install --no-cache-dir ." in dockerfile
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}  # no daemon answers there
    done = subprocess.run(["make", "-s", "sdk-image"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "no Docker daemon answers here" in done.stderr and "docker build" not in done.stdout
