"""Skiff's tests: unit tests of the core and integration tests with real processes."""
