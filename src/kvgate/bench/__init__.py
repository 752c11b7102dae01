"""kvgate.bench."""
