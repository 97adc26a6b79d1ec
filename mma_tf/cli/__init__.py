"""Command-line entry points (`mma-train`, `mma-evaluate`; also `python bin/train.py`)."""
