"""kvgate.plugins."""
