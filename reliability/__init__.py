"""Reliability proofs: the crash/restart/outage harness (``python -m reliability.crash_harness``)."""
