"""Benchmark suite parts: null model, server process control, in-process baselines, report writing."""
