"""The edge agent: the device daemon that syncs, caches and serves models."""
