"""Write notebooks/quickstart.ipynb from the cells below (outputs are never committed).

    uv run python scripts/build_notebooks.py
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell(
        "# Illustrious quickstart\n"
        "Compose a run config, build the Lightning module, train a few steps on the built-in shapes data, "
        "swap in an objective of your own, and look at samples. Everything runs on a CPU."
    ),
    new_code_cell(
        "import os\n"
        "import tempfile\n"
        "from hydra import compose, initialize_config_dir\n"
        "from illustrious.config import CONF_DIR\n"
        "\n"
        "STEPS = int(os.environ.get('QUICKSTART_STEPS', 60))  # the test suite runs this notebook with fewer\n"
        "out = tempfile.mkdtemp(prefix='illustrious-notebook-')\n"
        "with initialize_config_dir(config_dir=str(CONF_DIR), version_base='1.3'):\n"
        "    cfg = compose('config', overrides=[\n"
        "        'backbone=lumina_tiny', 'objective=flow', f'trainer.max_steps={STEPS}',\n"
        "        'trainer.enable_progress_bar=false', 'callbacks.composition.num_samples=16',\n"
        "        f'output_dir={out}',\n"
        "    ])\n"
        "print(cfg.backbone.transformer)"
    ),
    new_markdown_cell("## Train with the configured parts\n`train(cfg)` is a plain function: it returns the metrics and the objects it built."),
    new_code_cell(
        "from illustrious.train import train\n"
        "\n"
        "metrics, objects = train(cfg)\n"
        "{k: round(v, 4) for k, v in metrics.items()}"
    ),
    new_markdown_cell(
        "## Swap in your own objective\n"
        "Any subclass of an `Objective` plugs into the same module. Here: rectified flow with the loss "
        "weighted towards noisy times, and times drawn uniformly."
    ),
    new_code_cell(
        "import torch\n"
        "import lightning as L\n"
        "from hydra.utils import instantiate\n"
        "from illustrious.objectives import FlowObjective\n"
        "from illustrious.objectives.timesteps import Uniform\n"
        "from illustrious.module import DiffusionModule\n"
        "\n"
        "class NoisyTimesFlow(FlowObjective):\n"
        "    def loss_weight(self, t):\n"
        "        return 0.5 + t  # our own weighting\n"
        "\n"
        "module = DiffusionModule(\n"
        "    backbone=objects['module'].backbone,  # keep training the model from above\n"
        "    objective=NoisyTimesFlow(timesteps=Uniform()),\n"
        "    optimizer=instantiate(cfg.optim.optimizer), lr=3e-4,\n"
        "    sampling={'steps': 20, 'guidance_scale': 4.0},\n"
        ")\n"
        "trainer = L.Trainer(max_steps=max(STEPS // 2, 1), logger=False, enable_checkpointing=False,\n"
        "                    enable_progress_bar=False, enable_model_summary=False)\n"
        "trainer.fit(module, datamodule=objects['datamodule'])\n"
        "float(trainer.callback_metrics['train/loss'])"
    ),
    new_markdown_cell("## Samples\nHeld-out prompts the model has not trained on, sampled with classifier-free guidance."),
    new_code_cell(
        "from IPython.display import display\n"
        "from illustrious.eval.composition import composition_accuracy, to_uint8\n"
        "from illustrious.sampling.grid import image_grid\n"
        "\n"
        "layouts = objects['datamodule'].eval_layouts(16)\n"
        "prompts = [layout.sentence() for layout in layouts]\n"
        "images = to_uint8(module.generate(prompts, height=32, width=32, seed=0))\n"
        "print('composition accuracy:', composition_accuracy(images, layouts))\n"
        "display(image_grid(images, prompts, columns=8))"
    ),
]


def main() -> None:
    nb = new_notebook(cells=CELLS, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
    nbformat.write(nb, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
