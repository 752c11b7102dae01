"""kvgate.kvcache."""
