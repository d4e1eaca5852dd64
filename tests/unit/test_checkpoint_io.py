import pytest
import torch

from illustrious.checkpoint_io import load_checkpoint_file, save_checkpoint_file


def test_round_trip_keeps_structure_and_types(tmp_path):
    shared = torch.randn(3, 4)
    ckpt = {
        "state_dict": {"a.weight": shared, "b.weight": shared, "view": shared[1]},  # tied weights and a view
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
                              "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0], "name": "denoiser"}]}],
        "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 1}}, "nested": None}},
        "epoch": 2, "global_step": 10, "flag": True, "inf": float("inf"), "dtype": torch.bfloat16,
        "cfg": {"optim": {"lr": 0.001}, "list": [1, "two", 3.0]},
    }
    path = tmp_path / "x.safetensors"
    save_checkpoint_file(ckpt, path)
    back = load_checkpoint_file(path)
    assert back["optimizer_states"][0]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert list(back["optimizer_states"][0]["state"]) == [0]  # int keys stay ints
    torch.testing.assert_close(back["state_dict"]["b.weight"], shared)
    torch.testing.assert_close(back["state_dict"]["view"], shared[1])
    assert back["loops"] == ckpt["loops"] and back["cfg"] == ckpt["cfg"]
    assert back["dtype"] is torch.bfloat16 and back["inf"] == float("inf") and back["flag"] is True


def test_unsupported_objects_are_named(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\.bad"):
        save_checkpoint_file({"bad": object()}, tmp_path / "x.safetensors")


def test_pickle_refused_unless_allowed(tmp_path):
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_checkpoint_file(path)
    assert torch.equal(load_checkpoint_file(path, allow_pickle=True)["state_dict"]["w"], torch.ones(2))


def test_plain_safetensors_file_is_explained(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, tmp_path / "weights.safetensors")
    with pytest.raises(ValueError, match="not an Illustrious training checkpoint"):
        load_checkpoint_file(tmp_path / "weights.safetensors")
