"""`CheckpointError`: a Hugging Face folder that cannot be read or written.

Owns: the error type of the `hf` package (its message names the file and what is wrong).
Imports: nothing.
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be read or written; the message names file and field."""
