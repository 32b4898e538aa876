"""What is searched: attention modules, blocks with insertion points, backbones, builders.

This package never imports ``sweep`` or ``analysis`` (data flows config -> model -> trial).
"""
