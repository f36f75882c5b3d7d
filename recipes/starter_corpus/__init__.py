"""Starter corpus: real recordings and rendered music from Debian packages (see README.md)."""
