"""Discovery shim for coordsweep's sweeper (the code lives in ``sweep/sweeper``)."""
__version__ = "0.1.0"
