"""kvgate.sidecar: llm-d's routing sidecar (P/D two-leg protocol) beside a decode server."""
