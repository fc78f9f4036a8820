"""Offline tools: the synthetic shapes world, training recipes, weight converters."""
