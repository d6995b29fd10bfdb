"""A subprocess started while gRPC threads are busy starts (grpc/grpc#43055, pipelines/__init__.py).

With gRPC's fork handlers on, a child forked while another thread is inside gRPC can abort before it execs
("epoll_wait error: Bad file descriptor"): it happened to the tests' moto server, started after pipelines
had run, and could happen to the stream starting its gateway. Importing `pipelines` turns them off.
"""

from __future__ import annotations

import os
import subprocess
import sys

BUSY_GRPC_THEN_FORK = """
import pipelines  # what every entry point imports first
import subprocess, threading
from concurrent import futures
import grpc

server = grpc.server(futures.ThreadPoolExecutor(4))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
busy = threading.Event()
done = threading.Event()

def call_forever():
    call = grpc.insecure_channel(f"127.0.0.1:{port}").unary_unary("/dpipe.Test/Nothing")
    while not done.is_set():
        try:
            call(b"", timeout=1)
        except grpc.RpcError:  # UNIMPLEMENTED: the server has no such method, which is all this needs
            busy.set()

threads = [threading.Thread(target=call_forever, daemon=True) for _ in range(4)]
for t in threads:
    t.start()
busy.wait(30)
# a preexec_fn makes Python fork (not vfork), so the fork handlers run
died = sum(subprocess.run(["true"], preexec_fn=lambda: None).returncode != 0 for _ in range(300))
done.set()
print(died)
"""


def test_children_forked_while_grpc_is_busy_all_start() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}  # as a user's shell has it
    out = subprocess.run([sys.executable, "-c", BUSY_GRPC_THEN_FORK], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    assert out.stdout.split()[-1] == "0", out.stderr[-2000:]  # without the fix about 1 child in 30 aborts
    assert "skipping fork() handlers" not in out.stderr


def test_importing_pipelines_turns_grpc_fork_handlers_off_in_this_process() -> None:
    import grpc._cython.cygrpc as cygrpc

    assert os.environ["GRPC_ENABLE_FORK_SUPPORT"] == "false" and not cygrpc.is_fork_support_enabled()
