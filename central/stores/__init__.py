"""Storage behind two small interfaces: the metadata store and the blob store.

The services depend only on :mod:`central.stores.base`; the embedded defaults are
SQLite (:mod:`central.stores.sqlite`) and the local filesystem (:mod:`central.stores.blobs`).
"""
