"""The collector: tails log files on a server and ships their lines to the gateway, at least once.

    tailer.py      files by fingerprint: rotation, truncation, long and partial lines
    lines.py       ignores, raw lines wrapped as ALS, long lines cut into dead letters (pure functions)
    batcher.py     contiguous byte ranges of one file per POST; acknowledged offsets in file order
    shipper.py     HTTP with failover, backoff and Retry-After
    checkpoint.py  acknowledged offsets and sent ranges, written atomically
    metrics.py     /metrics and the status line
    agent.py       the loop that ties them together (`python -m pipelines.collect`)
"""
