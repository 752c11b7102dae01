"""kvgate.plugins.profiles."""
