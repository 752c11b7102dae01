"""kvgate.sim."""
