"""Metrics with local models (tiny random ones, saved in the real formats and loaded back): FID, KID, CLIP score,
character similarity. Values against the published formulas written out in numpy."""

import numpy as np
import pytest
import torch
from PIL import Image

from illustrious.errors import ConfigError
from illustrious.eval.metrics import CharacterSimilarity, LocalCLIPScore, TimmEmbedder
from illustrious.eval.metrics.distribution import add_real_images, fid, kid, reference_files

MODEL = "test_resnet"  # a timm registry entry with ~0.4 M parameters


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny random timm classifier saved as safetensors (its head included, as a real checkpoint has it)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(MODEL, pretrained=False, num_classes=7)
    path = tmp_path_factory.mktemp("timm") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def embedder(weights):
    return TimmEmbedder(MODEL, weights, image_size=64)


def images(n, seed, size=32):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 3, 1, 1))
    return torch.from_numpy(np.clip(base + rng.integers(-60, 60, (n, 3, size, size)), 0, 255).astype(np.uint8))


def test_embedder_loads_local_weights_and_checks_them(weights, embedder, tmp_path):
    import timm
    import torch.nn.functional as F
    from safetensors.torch import load_file

    model = timm.create_model(MODEL, pretrained=False, num_classes=0)
    model.load_state_dict({k: v for k, v in load_file(str(weights)).items() if not k.startswith("fc.")})
    model.eval()
    x = images(3, 0)
    pixels = F.interpolate(x.float() / 255, size=(64, 64), mode="bilinear", antialias=True)
    expected = model((pixels - 0.5) / 0.5)
    torch.testing.assert_close(embedder(x), expected)
    assert embedder.num_features == expected.shape[1] and not embedder.training

    with pytest.raises(ConfigError, match=r"model_name='not_a_model' is not a timm model name"):
        TimmEmbedder("not_a_model", weights)
    with pytest.raises(ConfigError, match=r"not weights of timm's 'test_vit'"):
        TimmEmbedder("test_vit", weights)
    pickled = tmp_path / "model.bin"
    pickled.write_bytes(b"\x80\x04")
    with pytest.raises(ConfigError, match=r"\.safetensors files only"):
        TimmEmbedder(MODEL, pickled)


def covariance(x):
    return np.cov(x, rowvar=False)


def test_fid_and_kid_against_the_formulas(embedder, tmp_path):
    real, fake = images(10, 1), images(8, 2)
    folder = tmp_path / "real"
    folder.mkdir()
    for i, image in enumerate(real):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:02d}.png")
    (folder / "broken.png").write_bytes(b"not a png")  # skipped and counted, not fatal

    fr, ff = embedder(real).double().numpy(), embedder(fake).double().numpy()
    mu1, mu2, s1, s2 = fr.mean(0), ff.mean(0), covariance(fr), covariance(ff)
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    expected_fid = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt

    metric = fid(embedder)
    assert add_real_images(metric, reference_files(folder), batch_size=4) == 10
    metric.update(fake[:3], real=False)
    metric.update(fake[3:], real=False)
    assert float(metric.compute()) == pytest.approx(expected_fid, rel=1e-3)
    metric.reset()  # real features stay: a second checkpoint is scored against the same references
    metric.update(real[:8], real=False)
    assert float(metric.compute()) < expected_fid

    # KID: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018);
    # one subset of all samples makes it deterministic
    n = 8
    kernel = lambda a, b: (a @ b.T / fr.shape[1] + 1) ** 3  # noqa: E731
    x, y = fr[:n], ff
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    expected_kid = ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                    - 2 * kxy.mean())
    metric = kid(embedder, subset_size=n, subsets=1)
    metric.update(real[:n], real=True)
    metric.update(fake, real=False)
    mean, std = metric.compute()
    assert float(mean) == pytest.approx(expected_kid, rel=1e-4) and float(std) == 0


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny random CLIPModel and its processor, saved with save_pretrained (the shipped tiny CLIP tokenizer)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast

    from illustrious.backbones.text_encoders import TOKENIZERS_DIR

    tokenizer = CLIPTokenizerFast.from_pretrained(str(TOKENIZERS_DIR / "clip_tiny"))
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(text_config={**small, "vocab_size": len(tokenizer), "max_position_embeddings": 77,
                                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                                     "pad_token_id": tokenizer.pad_token_id},
                        vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=16)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


def test_clip_score_with_a_local_model(clip_folder, tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    prompts = ["a red circle on the left", "a blue square", "1girl, smile", "a green triangle on the top"]
    x = images(4, 3)
    model, processor = CLIPModel.from_pretrained(clip_folder), CLIPProcessor.from_pretrained(clip_folder)
    with torch.no_grad():
        inputs = processor(text=prompts, images=list(x), return_tensors="pt", padding=True)
        image = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output.double().numpy()
        text = model.get_text_features(input_ids=inputs["input_ids"],
                                       attention_mask=inputs["attention_mask"]).pooler_output.double().numpy()
    cosine = (image * text).sum(1) / np.linalg.norm(image, axis=1) / np.linalg.norm(text, axis=1)
    expected = max(100 * cosine.mean(), 0.0)  # Hessel et al.: w * max(cos, 0) averaged; torchmetrics floors the mean

    whole, split = LocalCLIPScore(clip_folder), LocalCLIPScore(clip_folder)
    whole.update(x, prompts)
    split.update(x[:1], prompts[:1])
    split.update(x[1:].float() / 127.5 - 1, prompts[1:])  # float pixels in [-1, 1] are read the same
    assert float(whole.compute()) == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert float(split.compute()) == pytest.approx(float(whole.compute()), rel=1e-5, abs=1e-5)

    with pytest.raises(ConfigError, match="is not a local model folder"):
        LocalCLIPScore(tmp_path / "openai/clip-vit-large-patch14")


def test_character_similarity_per_character(embedder, tmp_path):
    refs = {"hatsune_miku": images(3, 10, 48), "hakurei_reimu": images(2, 11, 40)}
    for name, batch in refs.items():
        (tmp_path / name).mkdir()
        for i, image in enumerate(batch):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / name / f"{i}.png")
    prompts = ["1girl, hatsune miku, smile", "Hakurei_Reimu, shrine", "a cat", "hatsune miku and hakurei reimu",
               "hatsune mikuX"]
    generated = images(5, 12)
    metric = CharacterSimilarity.from_folder(embedder, tmp_path)
    assert metric.names == ["hakurei_reimu", "hatsune_miku"]
    whole = metric
    whole.update(generated, prompts)
    split = CharacterSimilarity.from_folder(embedder, tmp_path)
    split.update(generated[:2], prompts[:2])
    split.update(generated[2:], prompts[2:])

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    g = unit(embedder(generated).double().numpy())
    r = {name: unit(embedder(torch.stack([torch.from_numpy(np.array(
        Image.open(tmp_path / name / f"{i}.png").resize((64, 64), Image.Resampling.LANCZOS))).permute(2, 0, 1)
        for i in range(len(batch))])).double().numpy()) for name, batch in refs.items()}
    members = {"hatsune_miku": [0, 3], "hakurei_reimu": [1, 3]}  # "hatsune mikuX" is not a whole-word match
    pairs = []
    for name, rows in members.items():
        sims = g[rows] @ r[name].T
        pairs += [(s.mean(), s.max()) for s in sims]
        for result in (whole.compute(), split.compute()):
            assert float(result[f"{name}/mean"]) == pytest.approx(sims.mean(1).mean(), rel=1e-6)
            assert float(result[f"{name}/max"]) == pytest.approx(sims.max(1).mean(), rel=1e-6)
            assert int(result[f"{name}/images"]) == 2
    assert float(whole.compute()["mean"]) == pytest.approx(np.mean([p[0] for p in pairs]), rel=1e-6)
    assert float(whole.compute()["max"]) == pytest.approx(np.mean([p[1] for p in pairs]), rel=1e-6)

    empty = CharacterSimilarity.from_folder(embedder, tmp_path)
    empty.update(generated[2:3], ["a cat"])
    assert torch.isnan(empty.compute()["hatsune_miku/mean"]) and int(empty.compute()["hatsune_miku/images"]) == 0
    with pytest.raises(ConfigError, match="holds no character subfolders"):
        CharacterSimilarity.from_folder(embedder, tmp_path / "hatsune_miku")
