"""Katana: hot patches as build artifacts for userland C programs on x86-64 Linux."""

__version__ = "0.1.0"
