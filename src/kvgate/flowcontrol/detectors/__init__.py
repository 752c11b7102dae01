"""Saturation-detector plugins, one per file, named after llm-d's types."""
