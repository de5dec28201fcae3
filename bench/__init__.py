"""Benchmarks (`make bench` runs bench/run_all.py); shared helpers in bench/_common.py."""
