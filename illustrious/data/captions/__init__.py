"""The caption pipeline: a sample's caption record -> the prompt it trains on at one step.

`captions=plain` (pick a caption string, drop at a rate), `captions=illustrious` and `captions=bigasp`
(tag sections, ordering, per-step augmentation; `pipeline.py`). Every draw is a pure function of the
sample's record and (seed, epoch, index) (`rng.py`). Derived tags (score, year, control tokens) are computed
once by `python -m illustrious.annotate` (`derived.py`, `image_stats.py`) and stored beside the manifest.
"""

from illustrious.data.captions.pipeline import TagCaptions
from illustrious.data.captions.plain import CaptionPipeline, PlainCaptions
from illustrious.data.captions.rng import CaptionKey, caption_rng
from illustrious.data.captions.source import caption_source

__all__ = ["CaptionKey", "CaptionPipeline", "PlainCaptions", "TagCaptions", "caption_rng", "caption_source"]
