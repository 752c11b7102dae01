"""kvgate.engines."""
