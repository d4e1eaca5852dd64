"""Data written to disk for later runs: the VAE latent cache (safetensors shards) and the WebDataset shard
writer behind `python -m illustrious.make_shards`."""
