"""The caption pipeline: statistical tests over many draws, determinism from (seed, epoch, sample)."""

import random
from collections import Counter

import pytest

from illustrious.data.captions import CaptionKey, PlainCaptions, TagCaptions, caption_source
from illustrious.data.captions.augment import (
    ILLUSTRIOUS_LEVELS,
    DropoutLevel,
    level_keep,
    level_table,
    random_order,
)
from illustrious.data.captions.tags import prompt_word, split_people

DRAWS = 4000
GENERAL = [f"tag_{i}" for i in range(40)]


def record(general=GENERAL, **kw):
    tags = {"general": ["1girl", "solo", *general], "character": ["hatsune_miku"], "copyright": ["vocaloid"],
            "artist": ["some_artist"]}
    return caption_source(tags, rating="sensitive", score_tag="masterpiece", year_tag="newest", **kw)


def words(caption):
    return caption.split(", ")


def rate(n, p):  # a tolerance of 4.5 standard deviations of a binomial rate
    return 4.5 * (p * (1 - p) / n) ** 0.5


def test_tag_spelling_and_people():
    assert prompt_word("hatsune_miku_(append)") == "hatsune miku \\(append\\)"
    assert prompt_word("^_^") == "^_^" and prompt_word("long_hair") == "long hair"
    assert split_people(["1girl", "long_hair", "6+girls", "solo", "multiple_boys"]) == (
        ["1girl", "6+girls", "solo", "multiple_boys"], ["long_hair"])


def test_order_schema_and_no_augmentation():
    pipe = TagCaptions(shuffle=(), dropout_levels=())
    caption = pipe(record(general=["long_hair", "red_eyes"]), CaptionKey(0, 0, 0))
    assert caption == ("1girl, solo, hatsune miku, vocaloid, sensitive, long hair, red eyes, some artist, "
                       "masterpiece, newest")
    reordered = TagCaptions(order=("artist", "general", "people"), shuffle=(), dropout_levels=())
    assert reordered(record(general=["long_hair"]), CaptionKey(0, 0, 0)) == "some artist, long hair, 1girl, solo"
    with pytest.raises(ValueError, match="unknown section"):
        TagCaptions(order=("people", "charactr"))


def test_same_key_same_caption_and_no_global_rng():
    pipe = TagCaptions(paraphrases={"1girl": ["one girl"]}, paraphrase_prob=0.5, register_prob=0.5, space_prob=0.3,
                       uncond_prob=0.1)
    src = record()
    state = random.getstate()
    first = [pipe(src, CaptionKey(3, e, i)) for e in range(5) for i in range(50)]
    assert random.getstate() == state  # the global RNG is never touched
    random.seed(12345)
    again = [pipe(src, CaptionKey(3, e, i)) for e in range(5) for i in range(50)]
    assert first == again
    # a fresh pipeline object (another worker, another rank) gives the same caption for the same key
    assert TagCaptions(paraphrases={"1girl": ["one girl"]}, paraphrase_prob=0.5, register_prob=0.5, space_prob=0.3,
                       uncond_prob=0.1)(src, CaptionKey(3, 2, 7)) == first[2 * 50 + 7]


def test_different_samples_epochs_seeds_differ():
    pipe = TagCaptions()
    src = record()
    by_index = {pipe(src, CaptionKey(0, 0, i)) for i in range(200)}  # e.g. rank 0 takes even, rank 1 odd indices
    by_epoch = {pipe(src, CaptionKey(0, e, 0)) for e in range(200)}
    by_seed = {pipe(src, CaptionKey(s, 0, 0)) for s in range(200)}
    assert min(len(by_index), len(by_epoch), len(by_seed)) > 190
    even = [pipe(src, CaptionKey(0, 0, i)) for i in range(0, 400, 2)]
    odd = [pipe(src, CaptionKey(0, 0, i)) for i in range(1, 400, 2)]
    assert sum(a == b for a, b in zip(even, odd, strict=True)) < 5


@pytest.mark.parametrize("shuffle,protected", [((), ("tag_0",)), (("general",), ("tag_0",)), (("general",), ())])
def test_dropout_levels_at_their_rates(shuffle, protected):
    pipe = TagCaptions(shuffle=shuffle, weak_dropout={}, protected=protected)
    src = record()
    n = len(GENERAL) - len(protected)
    expected = {lv.keep(n): lv.p for lv in ILLUSTRIOUS_LEVELS}
    expected[n] = 1 - sum(expected.values())
    if protected:
        assert sorted(expected) == [4, 6, 11, 15, 39]  # int(.3 * 39) = 11, int(.4 * 39) = 15
    counts = Counter()
    for i in range(DRAWS):
        kept = words(pipe(src, CaptionKey(0, 0, i)))
        assert "tag 0" in kept or not protected  # protected
        assert kept[:4] == ["1girl", "solo", "hatsune miku", "vocaloid"]  # other sections untouched
        counts[sum(w.startswith("tag ") for w in kept) - len(protected)] += 1
    for keep, p in expected.items():
        assert abs(counts[keep] / DRAWS - p) < rate(DRAWS, p), (keep, counts)


def test_level_keep_formula():
    assert [lv.keep(40) for lv in ILLUSTRIOUS_LEVELS] == [12, 16, 6, 4]
    assert [lv.keep(8) for lv in ILLUSTRIOUS_LEVELS] == [8, 8, 6, 4]
    assert [lv.keep(3) for lv in ILLUSTRIOUS_LEVELS] == [3, 3, 3, 3]
    levels = (DropoutLevel(0.5, 0.5, 0), DropoutLevel(0.25, 0.0, 1))
    assert [level_keep(10, level_table(levels), u) for u in (0.1, 0.6, 0.9)] == [5, 1, 10]


@pytest.mark.parametrize("shuffle", [(), ("general",)])
def test_dropped_tags_are_uniform_and_order_kept(shuffle):
    pipe = TagCaptions(shuffle=shuffle, weak_dropout={})
    src = record()
    seen = Counter()
    for i in range(DRAWS):
        kept = [w for w in words(pipe(src, CaptionKey(0, 0, i))) if w.startswith("tag ")]
        if not shuffle:
            assert kept == sorted(kept, key=lambda w: int(w.split()[1]))  # order kept when not shuffled
        seen.update(kept)
    # every general tag survives about equally often
    assert max(seen.values()) / min(seen.values()) < 1.2


def test_weak_dropout_rates():
    pipe = TagCaptions(weak_dropout={"character": 0.1, "artist": 0.25})
    src = record()
    lost = Counter()
    for i in range(DRAWS):
        caption = pipe(src, CaptionKey(0, 0, i))
        lost["character"] += "hatsune miku" not in caption
        lost["artist"] += "some artist" not in caption
    assert abs(lost["character"] / DRAWS - 0.1) < rate(DRAWS, 0.1)
    assert abs(lost["artist"] / DRAWS - 0.25) < rate(DRAWS, 0.25)


def test_register_tokens_paraphrase_separator_rates():
    pipe = TagCaptions(register_prob=0.2, register_count=(1, 1), register_length=(6, 6), paraphrases={"1girl": ["one girl"]},
                       paraphrase_prob=0.3, space_prob=0.1, shuffle=(), dropout_levels=())
    src = record(general=["long_hair"])
    plain = "1girl, solo, hatsune miku, vocaloid, sensitive, long hair, some artist, masterpiece, newest"
    counts = Counter()
    for i in range(DRAWS):
        caption = pipe(src, CaptionKey(0, 0, i))
        spaced = ", " not in caption
        base, _, tail = caption.rpartition(" newest")
        counts["register"] += bool(tail)
        if tail:
            assert len(tail.strip()) == 6 and tail.strip().isalnum()
        counts["space"] += spaced
        counts["paraphrase"] += caption.startswith("one girl")
        if not tail and not spaced and not caption.startswith("one girl"):
            assert caption == plain
    for name, p in (("register", 0.2), ("space", 0.1), ("paraphrase", 0.3)):
        assert abs(counts[name] / DRAWS - p) < rate(DRAWS, p), (name, counts)


def test_unconditional_and_caption_mixing():
    pipe = TagCaptions(caption_prob=0.2, uncond_prob=0.1, uncond_quality_fraction=0.5, section_prob={"score": 0.5},
                       dropout_levels=())
    src = record(caption="A girl singing on a stage.")
    counts = Counter()
    for i in range(DRAWS):
        caption = pipe(src, CaptionKey(0, 0, i))
        if caption == "":
            counts["empty"] += 1
        elif caption == "masterpiece":
            counts["quality only"] += 1
        elif caption.endswith("A girl singing on a stage."):
            counts["sentence"] += 1
            counts["sentence with quality"] += caption.startswith("masterpiece, ")
        else:
            counts["tags"] += 1
            counts["tags with quality"] += "masterpiece" in caption
    assert abs(counts["empty"] / DRAWS - 0.05) < rate(DRAWS, 0.05)
    assert abs(counts["quality only"] / DRAWS - 0.05) < rate(DRAWS, 0.05)
    conditional = DRAWS - counts["empty"] - counts["quality only"]
    assert abs(counts["sentence"] / conditional - 0.2) < rate(conditional, 0.2)
    assert abs(counts["sentence with quality"] / counts["sentence"] - 0.5) < rate(counts["sentence"], 0.5)
    assert abs(counts["tags with quality"] / counts["tags"] - 0.5) < rate(counts["tags"], 0.5)


def test_shuffle_within_sections_only():
    pipe = TagCaptions(dropout_levels=(), weak_dropout={})
    src = record(general=["a_a_a", "b_b_b", "c_c_c"])
    firsts = Counter()
    for i in range(600):
        w = words(pipe(src, CaptionKey(0, 0, i)))
        assert w[:5] == ["1girl", "solo", "hatsune miku", "vocaloid", "sensitive"]
        assert sorted(w[5:8]) == ["a a a", "b b b", "c c c"] and w[8:] == ["some artist", "masterpiece", "newest"]
        firsts[w[5]] += 1
    assert min(firsts.values()) > 150  # each of the three leads about a third of the time


def test_random_order_is_a_permutation():
    rng = random.Random(0)
    assert sorted(random_order(50, rng)) == list(range(50))
    firsts = Counter(random_order(4, rng)[0] for _ in range(4000))
    assert max(firsts.values()) - min(firsts.values()) < 200


def test_plain_pipeline_and_strings():
    pipe = PlainCaptions(styles={"tags": 1.0, "sentence": 1.0}, dropout=0.1)
    src = {"tags": "red circle, left", "sentence": "A red circle on the left."}
    draws = [pipe(src, CaptionKey(0, 0, i)) for i in range(DRAWS)]
    assert abs(draws.count("") / DRAWS - 0.1) < rate(DRAWS, 0.1)
    assert draws == [pipe(src, CaptionKey(0, 0, i)) for i in range(DRAWS)]
    # the tag pipeline reads the same strings: tags become general tags, the sentence a written caption
    tag_pipe = TagCaptions(shuffle=(), dropout_levels=(), caption_prob=0.0)
    assert tag_pipe(src, CaptionKey(0, 0, 0)) == "red circle, left"
    assert tag_pipe("just a caption", CaptionKey(0, 0, 0)) == "just a caption"
