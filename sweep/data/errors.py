"""Errors of the data pipeline."""
from __future__ import annotations


class DataError(RuntimeError):
    """A data file is missing, corrupt or not what its layout promises; the message names the file."""
