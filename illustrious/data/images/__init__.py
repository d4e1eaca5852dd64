"""One image -> one bucket-sized sample: Pillow decoding (decode.py), the preprocessing settings
(`ImageSettings`), aspect-ratio buckets and crop plans, and the decode-resize-crop step (preprocess.py)."""
