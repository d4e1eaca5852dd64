"""Decoding one image: modes, EXIF orientation, bombs, broken files, resize and crop, micro-conditioning."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from illustrious.data.images.buckets import plan_crop
from illustrious.data.images.decode import ImageError, decode, open_image, read_header, to_rgb
from illustrious.data.images.preprocess import load_pixels
from illustrious.data.images.settings import ImageSettings
from illustrious.errors import ConfigError
from tests.unit.test_data_folder import _orientation, encoded, picture

SETTINGS = ImageSettings(min_side=8, bucket_multiple=8)


def rgb_of(data: bytes) -> np.ndarray:
    return np.asarray(decode(open_image(data, None), read_header(data).orientation)).astype(int)


def test_alpha_is_flattened_onto_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black -> white
    rgba.putpixel((1, 0), (0, 0, 0, 128))  # half transparent black -> mid grey
    out = rgb_of(encoded(rgba, "PNG"))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 2].tolist() == [255, 0, 0]
    assert 120 <= out[0, 1, 0] <= 135
    la = rgb_of(encoded(rgba.convert("LA"), "PNG"))
    assert la[0, 0].tolist() == [255, 255, 255]


def test_palette_transparency_and_other_modes_become_rgb():
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.info["transparency"] = 0
    out = rgb_of(encoded(pal, "PNG", transparency=0))
    assert out[0, 0].tolist() == [255, 255, 255] and out[1, 1].tolist() == [0, 255, 0]
    gray16 = Image.fromarray(np.full((4, 4), 0x8000, dtype=np.uint16))
    assert rgb_of(encoded(gray16, "PNG"))[0, 0].tolist() == [128, 128, 128]  # 16-bit scaled, not clipped
    bilevel = Image.new("1", (4, 4), 1)
    assert rgb_of(encoded(bilevel, "PNG"))[0, 0].tolist() == [255, 255, 255]
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    red = rgb_of(encoded(cmyk, "JPEG", quality=100))[1, 1]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    floats = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), "F")
    assert to_rgb(floats).getpixel((0, 0)) == (127, 127, 127)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_honoured_from_the_header(orientation):
    upright = picture(48, 32)
    # store the picture so that applying `orientation` shows it upright again
    inverse = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_270}
    stored = upright.transpose(inverse[orientation]) if orientation in inverse else upright
    data = encoded(stored, "PNG", exif=_orientation(orientation))
    header = read_header(data)
    assert (header.width, header.height, header.orientation) == (48, 32, orientation)
    np.testing.assert_array_equal(rgb_of(data), np.asarray(upright).astype(int))


def test_broken_files_name_their_problem():
    with pytest.raises(ImageError) as e:
        read_header(b"")
    assert e.value.reason == "unreadable_image"
    with pytest.raises(ImageError) as e:
        read_header(b"GIF89a but not really")
    assert e.value.reason == "unreadable_image"
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    truncated = encoded(noise, "JPEG")[:1500]
    assert read_header(truncated).width == 64  # the header is fine ...
    with pytest.raises(ImageError) as e:
        load_pixels(truncated, 1, 32, 32, SETTINGS)  # ... the pixels are not
    assert e.value.reason == "decode_failed"


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_decompression_bombs_are_refused_before_decoding():
    with pytest.raises(ImageError) as e:
        open_image(png_header_only(100_000, 100_000), None)  # Pillow's own limit
    assert e.value.reason == "decompression_bomb"
    with pytest.raises(ImageError) as e:
        open_image(png_header_only(3000, 3000), ImageSettings(bomb_megapixels=5).bomb_pixels)  # ours
    assert e.value.reason == "decompression_bomb"


def test_resize_and_centre_crop_with_micro_conditioning():
    source = picture(200, 100)
    pixels, (original, crop, target) = load_pixels(encoded(source, "PNG"), 1, 64, 64, SETTINGS)
    assert pixels.shape == (64, 64, 3)
    assert original == (100, 200) and target == (64, 64)
    assert crop == (0, 32)  # resized to 128x64, the centre 64 columns
    reference = np.asarray(source.resize((128, 64), Image.Resampling.LANCZOS))[:, 32:96]
    assert np.abs(pixels.astype(int) - reference.astype(int)).mean() < 2  # same picture, same place


def test_random_crop_stays_inside_and_is_recorded():
    import random

    source = picture(100, 200)
    seen = set()
    for seed in range(6):
        settings = ImageSettings(min_side=8, bucket_multiple=8, crop="random")
        pixels, (_, (top, left), _) = load_pixels(encoded(source, "PNG"), 1, 48, 48, settings, random.Random(seed))
        assert pixels.shape == (48, 48, 3) and left == 0 and 0 <= top <= 96 - 48
        reference = np.asarray(source.resize((48, 96), Image.Resampling.LANCZOS))[top:top + 48]
        assert np.abs(pixels.astype(int) - reference.astype(int)).mean() < 3
        seen.add(top)
    assert len(seen) > 1


def test_pixel_budget_sets_original_size():
    settings = ImageSettings(min_side=8, bucket_multiple=8, max_megapixels=0.01, bomb_megapixels=1)
    _, (original, _, _) = load_pixels(encoded(picture(200, 100), "PNG"), 1, 64, 32, settings)
    assert original == (71, 141)  # 200x100 scaled to 10,000 pixels, (h, w)


def test_large_jpeg_decodes_at_reduced_scale_with_the_same_picture():
    source = picture(1600, 1200)
    data = encoded(source, "JPEG", quality=95)
    pixels, (original, crop, target) = load_pixels(data, 1, 64, 48, SETTINGS)
    reference = np.asarray(source.resize((64, 48), Image.Resampling.LANCZOS))
    assert pixels.shape == (48, 64, 3) and original == (1200, 1600) and crop == (0, 0)
    assert np.abs(pixels.astype(int) - reference.astype(int)).mean() < 3


def test_rotated_jpeg_decodes_upright_at_reduced_scale():
    upright = picture(640, 320)
    data = encoded(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=_orientation(6))
    pixels, (original, _, _) = load_pixels(data, read_header(data).orientation, 64, 32, SETTINGS)
    reference = np.asarray(upright.resize((64, 32), Image.Resampling.LANCZOS))
    assert original == (320, 640) and np.abs(pixels.astype(int) - reference.astype(int)).mean() < 3


def test_crop_plan_covers_the_bucket():
    for w, h, bw, bh in [(100, 100, 64, 32), (37, 91, 32, 96), (1000, 10, 640, 64)]:
        plan = plan_crop(w, h, bw, bh)
        assert plan.resize_width >= bw and plan.resize_height >= bh
        assert plan.top + bh <= plan.resize_height and plan.left + bw <= plan.resize_width
        assert min(plan.resize_width - bw, plan.resize_height - bh) == 0  # only one axis is cropped
        assert abs(plan.resize_width / plan.resize_height - w / h) < 0.05 * w / h + 1 / plan.resize_height


def test_settings_name_the_bad_key():
    with pytest.raises(ConfigError, match="data.crop"):
        ImageSettings(crop="left")
    with pytest.raises(ConfigError, match="data.bucket_megapixels"):
        ImageSettings(bucket_megapixels=(2.0, 1.0))
    with pytest.raises(ConfigError, match="data.bomb_megapixels"):
        ImageSettings(max_megapixels=10, bomb_megapixels=5)


def test_folder_and_webdataset_share_one_image_settings_node(tmp_path):
    from dataclasses import fields

    from hydra import compose, initialize_config_dir

    from illustrious.config import CONF_DIR, instantiate

    overrides = {"folder": [f"data.root={tmp_path}"], "webdataset": [f"data.urls={tmp_path}"]}
    for source, extra in overrides.items():
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"data={source}", "data.min_side=32", "data.crop=random",
                                                           "data.bucket_megapixels=[0.001,0.004]", *extra])
        assert {f.name for f in fields(ImageSettings)} <= set(cfg.data)  # the keys users type stay data.*
        dm = instantiate(cfg.data)
        # the default backbone (lumina_tiny) declares a 32-px native resolution: the step follows it
        assert dm.settings == ImageSettings(native_resolution=32, min_side=32, crop="random",
                                            bucket_megapixels=(0.001, 0.004), bucket_step=4)
    from illustrious.data.sources.folder_datamodule import FolderDataModule

    settings = ImageSettings(min_side=16, bucket_multiple=8)  # in Python: one settings object
    assert FolderDataModule(root=str(tmp_path), images=settings).settings is settings
    with pytest.raises(ConfigError, match="data.min_side"):
        FolderDataModule.from_config(root=str(tmp_path), min_side=0)
