"""Exact captions pinned: a (config, seed, epoch, sample) must keep giving the same string.

Text-embedding caches, resumed runs and published recipes depend on the draw never changing for a key, so a
speed-up of the pipeline must reproduce these strings (and the digests over 3000 draws) bit for bit.
"""

import hashlib

import pytest

from illustrious.config import instantiate
from illustrious.data.captions import CaptionKey, TagCaptions, caption_source
from tests.conftest import compose_config

GENERAL = ["1girl", "solo", "long_hair", "smile", "open_mouth", "hatsune_miku_(append)", "^_^",
           *(f"tag_{i}" for i in range(33))]


def shipped(name: str, tmp_path) -> TagCaptions:
    """`captions=<name>` as a run composes and instantiates it."""
    return instantiate(compose_config([f"captions={name}"], tmp_path).captions)


def record():
    return caption_source({"general": GENERAL, "character": ["hatsune_miku"], "copyright": ["vocaloid"],
                           "artist": ["some_artist"]}, rating="questionable", caption="A girl singing on a stage.",
                          score_tag="masterpiece", year_tag="newest", control_tags=["high contrast"])


def test_record_from_raw_tags():
    rec = record()
    assert rec["sections"]["people"] == ["1girl", "solo"]
    assert rec["sections"]["general"][:6] == ["long hair", "smile", "open mouth", "hatsune miku \\(append\\)", "^_^",
                                              "tag 0"]
    assert rec["sections"]["character"] == ["hatsune miku"] and rec["sections"]["artist"] == ["some artist"]
    assert rec["sections"]["meta"] == [] and rec["control_tags"] == ["high contrast"]


ILLUSTRIOUS = {
    0: "1girl, solo, hatsune miku, vocaloid, nsfw, tag 16, tag 11, tag 13, ^_^, tag 26, tag 15, some artist, "
       "masterpiece, newest",
    1: "1girl, solo, hatsune miku, vocaloid, nsfw, tag 7, tag 20, tag 4, tag 24, some artist, masterpiece, newest",
    4: "1girl solo hatsune miku vocaloid nsfw tag 28 hatsune miku \\(append\\) tag 3 tag 5 some artist masterpiece "
       "newest",
    5: "1girl, solo, hatsune miku, vocaloid, nsfw, tag 14, tag 16, hatsune miku \\(append\\), mouth open, tag 31, "
       "tag 9, tag 11, tag 3, long hair, tag 26, tag 10, some artist, masterpiece, newest",
    8: "1girl, alone, hatsune miku, vocaloid, nsfw, tag 9, tag 24, tag 6, tag 28, hatsune miku \\(append\\), tag 1, "
       "tag 2, tag 31, long hair, tag 32, tag 10, some artist, masterpiece, newest",
    10: "1girl, solo, hatsune miku, vocaloid, nsfw, tag 0, tag 30, tag 5, smile, tag 14, tag 2, tag 11, tag 3, tag 21, "
        "tag 28, tag 7, tag 22, tag 23, tag 6, tag 27, mouth open, tag 19, tag 4, tag 31, tag 18, "
        "hatsune miku \\(append\\), tag 10, ^_^, tag 32, tag 1, tag 20, tag 16, long-haired, tag 29, tag 9, tag 12, "
        "tag 13, tag 24, tag 8, tag 15, tag 26, tag 25, tag 17, some artist, masterpiece, newest aoegw eyx3zbok",
    22: "",
}
BIGASP = {
    1: "masterpiece, A girl singing on a stage.",
    2: "1girl, solo, vocaloid, nsfw, tag 18, tag 1, tag 28, tag 11, tag 2, tag 8, tag 17, tag 30, tag 32, tag 5, "
       "tag 16, tag 4, tag 27, tag 6, tag 20, some artist, masterpiece",
    5: "1girl, solo, hatsune miku, vocaloid, nsfw, tag 13, tag 15, open mouth, smile, tag 30, tag 8, tag 10, tag 2, "
       "tag 32, tag 25, tag 9, masterpiece",
}
DIGESTS = {"illustrious": "062a0b6b39322a59c9ec826c3fc9bc1b1ac48f21d90bca5b1082decd56f946c6",
           "bigasp": "5fd0bf0810a52f71555a04ebcc218578a30827cf7e3d3cb8405d7084723b4f8b"}


@pytest.mark.parametrize("name,expected", [("illustrious", ILLUSTRIOUS), ("bigasp", BIGASP)])
def test_shipped_configs_give_pinned_captions(name, expected, tmp_path):
    pipe, rec = shipped(name, tmp_path), record()
    assert {i: pipe(rec, CaptionKey(11, 2, i)) for i in expected} == expected
    digest = hashlib.sha256()
    for i in range(3000):
        digest.update(pipe(rec, CaptionKey(i % 3, i % 4, i)).encode() + b"\0")
    assert digest.hexdigest() == DIGESTS[name]


def test_pooled_dropout_with_protected_tags_pinned():
    """The general dropout path (two droppable sections, protected tags): one permutation over the pool."""
    pipe = TagCaptions(protected=("tag_0", "long_hair"), droppable=("general", "artist"), shuffle=("general",),
                       dropout_levels=[{"p": 1.0, "keep_at_least": 3}])
    rec = record()
    assert [pipe(rec, CaptionKey(0, 0, i)) for i in range(3)] == [
        "1girl, solo, hatsune miku, vocaloid, nsfw, tag 20, tag 0, tag 25, long hair, some artist, masterpiece, newest",
        "1girl, solo, hatsune miku, vocaloid, nsfw, long hair, tag 6, tag 0, smile, tag 13, masterpiece, newest",
        "1girl, solo, hatsune miku, vocaloid, nsfw, tag 6, tag 3, tag 29, tag 0, long hair, masterpiece, newest",
    ]
