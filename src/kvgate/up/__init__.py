"""kvgate.up."""
