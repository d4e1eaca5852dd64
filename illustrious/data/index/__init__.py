"""Knowing what a folder holds without decoding it: the scan, the Parquet manifest, caption/metadata
sidecars, the caption rule (labels.py), problem reports, and the selection of rows that train."""
