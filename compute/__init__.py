"""compute/: memory-typed functions and pipelines over plates (see the issues tracker)."""
