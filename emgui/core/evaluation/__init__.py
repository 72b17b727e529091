"""Evaluation: sampling, judges and their validity, runs and summaries, judge-free probes and measures."""
