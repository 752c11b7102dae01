"""kvgate.plugins.filters."""
