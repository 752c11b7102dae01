"""kvgate.extproc."""
