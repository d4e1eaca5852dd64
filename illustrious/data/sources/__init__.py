"""Where samples come from: the `data=shapes|folder|webdataset` data modules and the datasets behind them
(synthetic shapes, a scanned image folder, streamed WebDataset shards)."""
