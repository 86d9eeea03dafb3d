"""Skiff central registry: storage, domain services, HTTP API and admin CLI."""
