"""dpipe's entry points (`python -m pipelines.<name>`).

Importing this package first turns gRPC's fork handlers off before Beam loads gRPC (unless the environment
already says otherwise). With them on, a process that starts a subprocess while gRPC threads run (the stream
starting its gateway, the tests starting servers between pipelines) can see the child abort before it even
execs: "epoll_wait error: Bad file descriptor" (grpc/grpc#43055). Nothing in dpipe uses gRPC after a fork;
Beam's own tests turn the handlers off the same way.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
