"""kvgate.plugins.pickers."""
