"""EMA (callbacks=ema) against the published update rule, in samples and in checkpoints."""

import lightning as L
import pytest
import torch

from illustrious.callbacks.ema import EMA, averaged_weights, ema_state_dict, raw_state_dict
from illustrious.checkpoint_io import load_checkpoint_file
from illustrious.config import instantiate
from illustrious.train import build_module, build_trainer


class Recorder(L.Callback):
    """The trained weights after every optimizer step, and what `averaged_weights` shows at step 3."""

    def __init__(self):
        self.weights, self.swapped_in = {}, None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        self.weights[step] = {k: v.detach().clone() for k, v in module.named_parameters()}
        if step == 3:
            with averaged_weights(trainer, module):
                self.swapped_in = {k: v.detach().clone() for k, v in module.named_parameters()}
            assert all(torch.equal(v, self.weights[3][k]) for k, v in module.named_parameters())  # restored


def expected_ema(weights, steps, decay):
    """ema = w at the first update, then decay * ema + (1 - decay) * w (torch / Lightning's EMA)."""
    ema = dict(weights[steps[0]])
    for step in steps[1:]:
        ema = {k: decay * ema[k] + (1 - decay) * weights[step][k] for k in ema}
    return ema


def test_ema_follows_the_published_formula(make_config, tmp_path):
    decay = 0.6
    cfg = make_config("backbone=sdxl_tiny", "callbacks=ema", f"callbacks.ema.decay={decay}", "callbacks.ema.start_step=2",
                      "callbacks.ema.every_n_steps=1", "trainer.max_steps=4", "callbacks.checkpoint.every_n_train_steps=4",
                      "callbacks.samples=null", "callbacks.composition=null", "optim.lrs={text_encoder_2:0}")
    L.seed_everything(cfg.seed, workers=True)
    trainer = build_trainer(cfg)
    recorder = Recorder()
    trainer.callbacks.append(recorder)
    datamodule = instantiate(cfg.data, captions=instantiate(cfg.captions))
    module = build_module(cfg)
    initial = {k: v.detach().clone() for k, v in module.named_parameters()}
    trainer.fit(module, datamodule=datamodule)

    ema_cb = next(c for c in trainer.callbacks if isinstance(c, EMA))
    assert ema_cb.updates == 3  # after steps 2, 3, 4
    # mid-training samples see the EMA of steps 2..3
    for k, v in expected_ema(recorder.weights, [2, 3], decay).items():
        torch.testing.assert_close(recorder.swapped_in[k], v, rtol=1e-6, atol=1e-7)
    # at the end the module holds the EMA of steps 2..4, and the checkpoint stores it with the raw weights
    ema = expected_ema(recorder.weights, [2, 3, 4], decay)
    ckpt = load_checkpoint_file(tmp_path / "checkpoints" / "last.safetensors")
    stored_ema, stored_raw = ema_state_dict(ckpt), raw_state_dict(ckpt)
    for k, v in module.named_parameters():
        torch.testing.assert_close(v.detach(), ema[k], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(stored_ema[k], ema[k], rtol=1e-6, atol=1e-7)
        assert torch.equal(stored_raw[k], recorder.weights[4][k])
        if k.startswith("backbone.text_encoders.clip_g."):  # frozen: the average is the weight, bit for bit
            assert torch.equal(v.detach(), initial[k])
    assert not torch.equal(ema["backbone.denoiser.conv_in.weight"], recorder.weights[4]["backbone.denoiser.conv_in.weight"])


def test_checkpoints_without_ema_have_no_ema_weights():
    state = {"w": torch.ones(1)}
    assert ema_state_dict({"state_dict": state}) is None and raw_state_dict({"state_dict": state}) == state


def test_ema_settings_are_checked():
    with pytest.raises(ValueError, match="decay"):
        EMA(decay=1.5)
    with pytest.raises(ValueError, match="every_n_steps"):
        EMA(every_n_steps=0)
    assert [s for s in range(1, 12) if EMA(every_n_steps=3, start_step=5).should_update(step_idx=s - 1)] == [5, 8, 11]
