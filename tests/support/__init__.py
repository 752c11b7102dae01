"""Helpers shared by tests: free ports, real processes with readiness polled on a deadline."""
