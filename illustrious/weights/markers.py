"""What a checkpoint says it predicts, read from and written as the markers the community tools use.

- `v_pred` and `ztsnr`: empty tensors in a single-file SDXL checkpoint. ComfyUI
  (comfy/supported_models.py, SDXL.model_type) samples a file with `v_pred` as v-prediction and, with `ztsnr`
  too, on the zero-terminal-SNR schedule; without them it assumes epsilon.
- `modelspec.prediction_type` (Stability's model spec metadata, written by kohya's sd-scripts): `epsilon` or `v`;
  `flow` here for a rectified-flow SDXL (bigASP v2.5), which ComfyUI must sample with its SD3 / flow nodes.
- A diffusers folder's `scheduler/scheduler_config.json`: `prediction_type`, `rescale_betas_zero_snr`, or a
  flow-matching scheduler class.

Names follow `Objective.prediction`: "eps", "v", "flow" (and "flow_x0", which no file format marks: refused for export).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from illustrious.errors import ConfigError

V_PRED_KEY, ZTSNR_KEY = "v_pred", "ztsnr"
MODELSPEC_PREDICTION = "modelspec.prediction_type"
TO_MODELSPEC = {"eps": "epsilon", "v": "v", "flow": "flow"}
FROM_NAME = {"epsilon": "eps", "eps": "eps", "v": "v", "v_prediction": "v", "flow": "flow", "flow_matching": "flow",
             "rectified_flow": "flow"}
DESCRIPTIONS = {"eps": "epsilon-prediction", "v": "v-prediction", "flow": "rectified-flow",
                "flow_x0": "rectified-flow x0-prediction"}


@dataclass(frozen=True)
class PredictionType:
    prediction: str  # "eps" | "v" | "flow" | "flow_x0" (trained here only: no file format marks it)
    zero_terminal_snr: bool = False
    source: str = ""  # what said so, for messages

    def describe(self) -> str:
        return DESCRIPTIONS[self.prediction] + (" with zero-terminal SNR" if self.zero_terminal_snr else "")


def of_objective(objective) -> PredictionType:
    return PredictionType(objective.prediction, bool(getattr(objective, "zero_terminal_snr", False)))


# -- writing -------------------------------------------------------------------------------------------------
def marker_tensors(kind: PredictionType) -> dict[str, torch.Tensor]:
    """The state-dict keys ComfyUI reads (empty tensors, as ComfyUI itself saves them)."""
    keys = {V_PRED_KEY: kind.prediction == "v", ZTSNR_KEY: kind.zero_terminal_snr}
    return {k: torch.tensor([]) for k, wanted in keys.items() if wanted}


def check_exportable(kind: PredictionType) -> None:
    """Refuse a prediction type that no tool reading these formats can sample."""
    if kind.prediction not in TO_MODELSPEC:
        raise ConfigError(f"This model is trained for {kind.describe()} (objective=flow_x0). ComfyUI, A1111 and "
                          "diffusers sample eps, v and flow (velocity) models only, and would read its output as a "
                          "velocity. Sample it here (python -m illustrious.sample), or train with objective=flow "
                          "to export.")


def marker_metadata(kind: PredictionType) -> dict[str, str]:
    meta = {MODELSPEC_PREDICTION: TO_MODELSPEC[kind.prediction]}
    if kind.zero_terminal_snr:
        meta["modelspec.zero_terminal_snr"] = "true"
    return meta


def scheduler_config(kind: PredictionType) -> dict:
    """A diffusers scheduler config that samples this model as trained (SDXL's discrete schedule or flow)."""
    if kind.prediction == "flow":
        return {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0}
    config = {"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
              "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "steps_offset": 1,
              "prediction_type": "v_prediction" if kind.prediction == "v" else "epsilon",
              "timestep_spacing": "leading"}
    if kind.zero_terminal_snr:
        config.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return config


# -- reading -------------------------------------------------------------------------------------------------
def from_single_file(keys, metadata: Mapping[str, str], source: str) -> PredictionType:
    """A single file's prediction type: the ComfyUI keys, else `modelspec.prediction_type`, else epsilon
    (what ComfyUI and A1111 assume for an unmarked SDXL file)."""
    keys = set(keys)
    spec = metadata.get(MODELSPEC_PREDICTION)
    ztsnr = ZTSNR_KEY in keys or str(metadata.get("modelspec.zero_terminal_snr", "")).lower() == "true"
    if V_PRED_KEY in keys:
        return PredictionType("v", ztsnr, f"{source} (its '{V_PRED_KEY}' key)")
    if spec is not None:
        if spec not in FROM_NAME:
            raise ConfigError(f"{source}: unknown {MODELSPEC_PREDICTION} {spec!r} (known: {', '.join(FROM_NAME)}).")
        return PredictionType(FROM_NAME[spec], ztsnr, f"{source} ({MODELSPEC_PREDICTION}={spec})")
    return PredictionType("eps", ztsnr, f"{source} (no v_pred key or {MODELSPEC_PREDICTION}: epsilon, as ComfyUI assumes)")


def from_diffusers_folder(root: Path) -> PredictionType:
    path = root / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return PredictionType("eps", False, f"{root} (no scheduler/scheduler_config.json: epsilon assumed)")
    config = json.loads(path.read_text())
    if "FlowMatch" in str(config.get("_class_name", "")):
        return PredictionType("flow", False, f"{path} ({config['_class_name']})")
    name = str(config.get("prediction_type", "epsilon"))
    if name not in FROM_NAME:
        raise ConfigError(f"{path}: unknown prediction_type {name!r}.")
    return PredictionType(FROM_NAME[name], bool(config.get("rescale_betas_zero_snr", False)),
                          f"{path} (prediction_type={name})")


# -- checking ------------------------------------------------------------------------------------------------
def check_objective(pretrained: PredictionType | None, objective, enabled: bool = True) -> None:
    """Refuse to train a checkpoint with an objective other than the one it was trained with, unless told to."""
    if pretrained is None or not enabled:
        return
    wanted = of_objective(objective)
    if (wanted.prediction, wanted.zero_terminal_snr) == (pretrained.prediction, pretrained.zero_terminal_snr):
        return
    raise ConfigError(
        f"The pretrained weights are {pretrained.describe()} (from {pretrained.source}), but the objective "
        f"({type(objective).__name__}) trains {wanted.describe()}. Choose the matching objective "
        "(objective=eps, objective=vpred with objective.zero_terminal_snr=true|false, objective=flow), or, to "
        "convert the model to a new prediction type on purpose, set backbone.check_prediction_type=false.")
