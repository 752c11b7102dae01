"""kvgate.k8s."""
