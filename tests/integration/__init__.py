"""Integration tests: the real central (and agents) as processes on loopback."""
