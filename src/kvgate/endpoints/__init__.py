"""kvgate.endpoints."""
