"""Coproc's benchmark harness: `python -m bench` (see README, "Performance").

Starts its own upstream, Coproc instances and baselines on 127.0.0.1, drives
them with wrk (or the bundled aiohttp load generator) and prints one table of
ratios measured in the same run; the figures also go to bench/results/*.json.
Benchmarks are not tests: nothing here asserts on speed.
"""
