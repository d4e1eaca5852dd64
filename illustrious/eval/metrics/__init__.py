"""Image metrics as torchmetrics `Metric`s: they accumulate over batches and sync across processes, so the
same objects serve a training callback and the `illustrious-evaluate` command. One module per family:

- `shapes.ShapesJudge`: the shapes judge (composition, shape, background, cleanliness);
- `luminance.Luminance`: mean luminance, darkest / brightest image, dynamic range (eps brightness limit);
- `colour.ColourStatistics`: the six control-token statistics of Illustrious 3.5 (image_stats' definitions);
- `distribution`: FID / KID against a folder of real images, features from a local `embedder.TimmEmbedder`;
- `clip.LocalCLIPScore`: CLIP score with a local transformers CLIP folder;
- `character.CharacterSimilarity`: CCIP-style similarity to per-character reference images.

Images are (N, 3, H, W) uint8 or float pixels in [-1, 1] (see `images.as_uint8`). Models are read from
local files only; nothing is downloaded.
"""

from illustrious.eval.metrics.character import CharacterSimilarity
from illustrious.eval.metrics.clip import LocalCLIPScore
from illustrious.eval.metrics.colour import ColourStatistics
from illustrious.eval.metrics.embedder import TimmEmbedder
from illustrious.eval.metrics.luminance import Luminance
from illustrious.eval.metrics.shapes import ShapesJudge, parse_layout

__all__ = ["CharacterSimilarity", "ColourStatistics", "LocalCLIPScore", "Luminance", "ShapesJudge", "TimmEmbedder",
           "parse_layout"]
