"""Training data, one room per concern: `sources` (data modules and datasets), `index` (scanning a folder,
its manifest, sidecars, captions rule, reports, selection), `images` (decoding, preprocessing settings,
buckets), `loading` (the sample record, the bucket batch sampler, collation) and `storage` (latent cache,
WebDataset shard writer). `captions.py` is the caption pipeline."""
