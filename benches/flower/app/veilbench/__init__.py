"""Flower timing anchor for veil (see ../../README.md)."""
