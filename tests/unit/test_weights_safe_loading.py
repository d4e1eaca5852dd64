"""Weights are read from safetensors; pickle files are refused, and with the opt-in read weights-only, so a
crafted pickle never runs. Writes are atomic and never replace a file unless asked. Prediction markers."""

from __future__ import annotations

import pickle

import pytest
import torch

from illustrious.errors import ConfigError
from illustrious.weights import markers
from illustrious.weights.safe_read import read_weights
from illustrious.weights.writing import write_folder, write_safetensors
from tests.conftest import WritesMarker


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_crafted_pickle_weights_are_refused_and_never_run(tmp_path, suffix):
    marker = tmp_path / "marker"
    path = tmp_path / f"evil{suffix}"
    path.write_bytes(pickle.dumps({"state_dict": {"w": WritesMarker(marker)}}))
    with pytest.raises(ValueError, match=r"can run any code.*allow_pickle=true.*weights_only=True"):
        read_weights(path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        read_weights(path, allow_pickle=True)
    assert not marker.exists()


def test_crafted_pickle_as_backbone_weights_is_refused(tmp_path):
    from illustrious.backbones.lumina import LuminaBackbone
    from illustrious.backbones.sdxl import SDXLBackbone

    marker = tmp_path / "marker"
    path = tmp_path / "model.pth"
    path.write_bytes(pickle.dumps(WritesMarker(marker)))
    with pytest.raises(ValueError, match="allow_pickle"):
        SDXLBackbone.from_pretrained(str(path), tokenizer_1="clip_tiny", tokenizer_2="clip_tiny")
    with pytest.raises(ValueError, match="allow_pickle"):
        LuminaBackbone.from_pretrained(str(path), tokenizer="gemma_tiny")
    with pytest.raises(pickle.UnpicklingError):
        LuminaBackbone.from_pretrained(str(path), tokenizer="gemma_tiny", allow_pickle=True)
    assert not marker.exists()


def test_pickle_opt_in_reads_plain_tensors(tmp_path):
    path = tmp_path / "consolidated.00-of-01.pth"
    torch.save({"model": {"x_embedder.weight": torch.ones(2, 2)}}, path)
    tensors, metadata = read_weights(path, allow_pickle=True)
    assert torch.equal(tensors["x_embedder.weight"], torch.ones(2, 2)) and metadata == {}


def test_writes_refuse_to_overwrite_and_leave_no_temporary(tmp_path):
    path = tmp_path / "w.safetensors"
    write_safetensors({"a": torch.zeros(2)}, path, {"k": "v"})
    with pytest.raises(FileExistsError, match="overwrite=true"):
        write_safetensors({"a": torch.ones(2)}, path)
    fused = torch.arange(6.0)
    tensors = {"a": fused[:3], "b": fused[3:], "scalar": torch.tensor(2.5), "marker": torch.tensor([]),
               "bf16": torch.randn(3, 4).to(torch.bfloat16).T, "ids": torch.arange(5)}  # views, odd dtypes and shapes
    write_safetensors(tensors, path, {"k": "v"}, overwrite=True)
    back, meta = read_weights(path)  # read by the safetensors library itself
    assert meta == {"k": "v"} and set(back) == set(tensors)
    assert all(torch.equal(back[k], tensors[k]) and back[k].dtype == tensors[k].dtype for k in tensors)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]

    def fail(tmp):
        tmp.mkdir()
        (tmp / "half").write_text("x")
        raise RuntimeError("interrupted")

    folder = tmp_path / "folder"
    write_folder(folder, lambda tmp: (tmp.mkdir(), (tmp / "ok").write_text("1")))
    with pytest.raises(RuntimeError):
        write_folder(folder, fail, overwrite=True)
    assert (folder / "ok").read_text() == "1"  # the old folder survives a failed replacement
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "w.safetensors"]


@pytest.mark.parametrize("keys, meta, expected", [
    ({"v_pred", "ztsnr"}, {}, ("v", True)),             # NoobAI-vpred style keys, as ComfyUI reads them
    ({"v_pred"}, {}, ("v", False)),
    (set(), {"modelspec.prediction_type": "v"}, ("v", False)),  # kohya's metadata
    (set(), {"modelspec.prediction_type": "epsilon"}, ("eps", False)),
    (set(), {"modelspec.prediction_type": "flow"}, ("flow", False)),
    (set(), {}, ("eps", False)),                         # unmarked: epsilon, as ComfyUI assumes
])
def test_prediction_markers_are_read(keys, meta, expected):
    kind = markers.from_single_file(keys, meta, "f")
    assert (kind.prediction, kind.zero_terminal_snr) == expected


def test_markers_written_round_trip_and_objective_check():
    from illustrious.objectives import EpsilonObjective, FlowObjective, VPredictionObjective

    for objective in (EpsilonObjective(), VPredictionObjective(zero_terminal_snr=True), FlowObjective()):
        kind = markers.of_objective(objective)
        back = markers.from_single_file(markers.marker_tensors(kind), markers.marker_metadata(kind), "x")
        assert (back.prediction, back.zero_terminal_snr) == (kind.prediction, kind.zero_terminal_snr)
        markers.check_objective(back, objective)
    vpred = markers.PredictionType("v", True, "noobai.safetensors (its 'v_pred' key)")
    with pytest.raises(ConfigError, match=r"noobai.safetensors.*EpsilonObjective.*check_prediction_type=false"):
        markers.check_objective(vpred, EpsilonObjective())
    with pytest.raises(ConfigError, match="zero-terminal"):
        markers.check_objective(vpred, VPredictionObjective(zero_terminal_snr=False))
    markers.check_objective(vpred, EpsilonObjective(), enabled=False)


def test_flow_x0_models_refuse_pretrained_flow_weights_and_export():
    from illustrious.objectives import FlowXPrediction

    lumina = markers.PredictionType("flow", False, "lumina2 (Lumina-2 is a flow model)")
    with pytest.raises(ConfigError, match=r"rectified-flow \(from lumina2.*rectified-flow x0-prediction"):
        markers.check_objective(lumina, FlowXPrediction())
    # no file format marks an x0-predicting flow model, and every reader would take its output for a velocity
    with pytest.raises(ConfigError, match="objective=flow_x0.*velocity"):
        markers.check_exportable(markers.of_objective(FlowXPrediction()))


def test_one_pickle_reader_for_checkpoints_and_weights(tmp_path, monkeypatch):
    """Training checkpoints and weight files read pickles through `read_pickle` alone (one refusal, one
    `weights_only=True` load); no other module of the package calls torch.load."""
    from pathlib import Path

    import illustrious
    from illustrious.checkpoint_io import load_checkpoint_file
    from illustrious.weights import safe_read

    calls = []
    real = safe_read.read_pickle
    monkeypatch.setattr(safe_read, "read_pickle", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    assert torch.equal(load_checkpoint_file(path, allow_pickle=True)["state_dict"]["w"], torch.ones(2))
    assert torch.equal(read_weights(path, allow_pickle=True)[0]["w"], torch.ones(2))
    assert calls == [path, path]
    package = Path(illustrious.__file__).parent
    callers = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py") if "torch.load(" in p.read_text())
    # sharded_checkpoint.py reads the entries of DCP folders (its allowlisted index reader), always weights_only=True
    assert callers == ["sharded_checkpoint.py", "weights/safe_read.py"]
    calls_there = [line for line in (package / "sharded_checkpoint.py").read_text().splitlines()
                   if "torch.load(" in line and "`" not in line]  # code, not the docstring
    assert calls_there and all("weights_only=True" in line for line in calls_there)
