"""Errors of the compute layer."""
from __future__ import annotations


class MemoryConversionError(Exception):
    """A conversion between two memory types failed; says which, how, and why."""

    def __init__(self, source_type: str, target_type: str, method: str, reason: str) -> None:
        self.source_type = str(source_type)
        self.target_type = str(target_type)
        self.method = method
        self.reason = reason
        super().__init__(f"Failed to convert {self.source_type} -> {self.target_type} via {method}: {reason}")


class MemoryTypeError(TypeError):
    """A function received or returned data of the wrong memory type or shape."""


class PipelineError(Exception):
    """A pipeline was refused before running (naming the step), or some of its stacks failed."""
