"""The command-line entry points, one module per console script (pyproject.toml):
moebench (app), moebench-leaderboard, moebench-report, moebench-regress,
moebench-count-models and the benchmarks (moebench-bench, moebench-bench-train,
moebench-bench-peer). The library they use lives beside this package."""
