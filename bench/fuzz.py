"""The long fuzz run: the properties of tests/test_fuzz.py with many more examples.

    flock /tmp/dpipe-bench.lock .venv/bin/python -m bench.fuzz [--examples 5000]

Every parser input, request, job config and spool folder hypothesis makes must get a clear answer (see the
test module); a failure prints hypothesis' smallest falsifying example. CI runs the same tests bounded
(150 examples each, well under 60 s in all).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000, help="examples per property (default %(default)s)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    env = {**os.environ, "DPIPE_FUZZ_EXAMPLES": str(args.examples)}
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:logging", "tests/test_fuzz.py"],
                           env=env)
    print(f"bench.fuzz: {args.examples} examples per property, {time.monotonic() - started:.0f} s, "
          f"{'passed' if code == 0 else 'FAILED'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
