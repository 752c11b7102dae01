"""kvgate.scheduling."""
