"""kvgate.plugins.scorers."""
