"""`python -m illustrious.consolidate <sharded folder> <file.safetensors> --allow-pickle`: one training checkpoint
from the sharded one an FSDP / FSDP2 run saves (`trainer=fsdp`, `trainer=fsdp2`).

A sharded checkpoint is a folder: every process's shard (`__<rank>_0.distcp`), torch.distributed.checkpoint's
index (`.metadata`) and Lightning's loop state (`meta.pt`). The index and the loop state are pickles, so reading
the folder needs the explicit opt-in; the consolidated file is an ordinary Illustrious safetensors checkpoint
(weights, optimizer states, loop state) that resumes, samples and exports like any other.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def load_sharded(folder: str | Path, allow_pickle: bool = False) -> dict:
    """The full checkpoint a sharded folder holds, in the layout a single-process run saves."""
    folder = Path(folder)
    if not (folder / ".metadata").is_file():
        raise FileNotFoundError(f"{folder} is not a sharded checkpoint folder (no .metadata index).")
    if not allow_pickle:
        raise ValueError(f"{folder}: a sharded checkpoint's index and loop state are pickles, which can run code "
                         "when read; if you trust this folder, pass --allow-pickle (allow_pickle=True).")
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    checkpoint = _load_distributed_checkpoint(folder)
    if "model" in checkpoint:  # FSDPStrategy's key; ModelParallelStrategy already writes "state_dict"
        checkpoint["state_dict"] = checkpoint.pop("model")
    optimizers = sorted((k for k in checkpoint if re.fullmatch(r"optimizer_\d+", k)), key=lambda k: int(k[10:]))
    if optimizers:
        checkpoint["optimizer_states"] = [checkpoint.pop(k) for k in optimizers]
    return checkpoint


def consolidate(folder: str | Path, output: str | Path, allow_pickle: bool = False) -> Path:
    from illustrious.checkpoint_io import save_checkpoint_file

    output = Path(output)
    if output.suffix != ".safetensors":
        raise ValueError(f"{output}: the consolidated checkpoint is a .safetensors file.")
    save_checkpoint_file(load_sharded(folder, allow_pickle=allow_pickle), output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m illustrious.consolidate", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a sharded checkpoint folder, e.g. outputs/.../checkpoints/last.safetensors")
    parser.add_argument("output", help="the single .safetensors file to write")
    parser.add_argument("--allow-pickle", action="store_true", help="read the folder's pickled index (trusted only)")
    args = parser.parse_args(argv)
    try:
        path = consolidate(args.folder, args.output, allow_pickle=args.allow_pickle)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
