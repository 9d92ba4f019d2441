"""Tests of the torch-free edgeiad_runtime package."""
