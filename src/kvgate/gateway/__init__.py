"""kvgate.gateway."""
