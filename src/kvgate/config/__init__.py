"""kvgate.config."""
