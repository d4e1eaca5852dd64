"""From samples to batches: the sample record every source yields (sample.py), the resumable bucket batch
sampler, and the collate that builds the batch format every module reads."""
