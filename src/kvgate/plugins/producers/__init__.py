"""kvgate.plugins.producers: llm-d DataProducers, run before the scheduling profiles."""
