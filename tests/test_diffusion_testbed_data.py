"""MiniSD data: determinism, captions vs labels, implicit assumptions, splits, tokenizer, errors."""

import numpy as np
import pytest
import torch
from transformers import CLIPTextModel

from lib.diffusion.testbed.data import (
    BRIGHTNESS_BUCKETS,
    COLOURS,
    DEFAULT_CONFIG,
    MAX_LENGTH,
    POSITIONS,
    SHAPES,
    WORDS,
    GrammarConfig,
    MiniTokenizer,
    clip_text_config,
    generate,
    parse_caption,
    render_backgrounds,
    sample_for_prompt,
    sample_labels,
)


def test_same_seed_same_bytes_and_different_seeds_or_splits_differ():
    a, b = generate(256, seed=3), generate(256, seed=3)
    assert a.images.dtype == np.float32 and a.images.shape == (256, 3, 32, 32)
    assert a.images.tobytes() == b.images.tobytes() and a.captions == b.captions
    assert not np.array_equal(a.images, generate(256, seed=4).images)
    assert not np.array_equal(a.images, generate(256, seed=3, split="all").images)
    assert not np.array_equal(generate(64, seed=(3, 1)).images, generate(64, seed=(3, 2)).images)
    assert 0.0 <= a.images.min() and a.images.max() <= 1.0


def test_captions_state_exactly_the_labelled_attributes():
    data = generate(1024, seed=0, split="all")
    lab = data.labels
    for i, caption in enumerate(data.captions):
        parsed = parse_caption(caption)
        assert parsed["shape"] == lab.shape[i]
        assert ("colour" in parsed) == lab.colour_stated[i]
        assert ("size" in parsed) == lab.size_stated[i]
        assert ("position" in parsed) == lab.position_stated[i]
        for key in ("colour", "size", "position", "texture"):
            if key in parsed:
                assert parsed[key] == getattr(lab, key)[i], (caption, key)
        # dark/bright are always said when they apply, never otherwise
        assert parsed.get("bucket", 1) == lab.bucket[i]
        assert lab.texture[i] in (0, 4) or parsed["texture"] == lab.texture[i]
    assert max(len(c.split()) for c in data.captions) + 2 <= MAX_LENGTH


def test_label_geometry_matches_pixels():
    data = generate(512, seed=1)
    lab = data.labels
    # the shape's centre pixel has the shape's colour, except for rings (hole)
    iy = np.clip(lab.cy.astype(int), 0, 31)
    ix = np.clip(lab.cx.astype(int), 0, 31)
    centre = data.images[np.arange(512), :, iy, ix]
    solid = lab.shape != SHAPES.index("ring")
    np.testing.assert_allclose(centre[solid], lab.rgb[solid], atol=1e-5)
    assert (lab.cx[lab.position == 0] < lab.cx[lab.position == 1].min()).all()
    assert (lab.radius[lab.size == 1].min() > lab.radius[lab.size == 0].max())


def test_implicit_colour_assumption_statistics():
    lab = sample_labels(120_000, np.random.default_rng(0), split="all")
    omitted = ~lab.colour_stated
    assert abs(omitted.mean() - 0.3) < 0.01
    for shape, colour in (("circle", "red"), ("square", "blue"), ("triangle", "yellow")):
        rows = omitted & (lab.shape == SHAPES.index(shape))
        assert abs((lab.colour[rows] == COLOURS.index(colour)).mean() - 0.95) < 0.01
        stated = lab.colour_stated & (lab.shape == SHAPES.index(shape))
        freq = np.bincount(lab.colour[stated], minlength=6) / stated.sum()
        np.testing.assert_allclose(freq, 1 / 6, atol=0.012)
    ring = omitted & (lab.shape == SHAPES.index("ring"))  # the control: no typical colour
    np.testing.assert_allclose(np.bincount(lab.colour[ring], minlength=6) / ring.sum(), 1 / 6,
                               atol=0.015)  # fmt: skip
    assert abs((lab.texture > 0).mean() - 0.4) < 0.01
    assert 0.015 < lab.brightness.min() and lab.brightness.max() < 0.985


def test_held_out_combinations_only_in_heldout_split():
    held = {(COLOURS.index(c), SHAPES.index(s), POSITIONS.index(p))
            for c, s, p in DEFAULT_CONFIG.held_out}  # fmt: skip
    train = sample_labels(100_000, np.random.default_rng(1), split="train")
    triples = set(zip(train.colour.tolist(), train.shape.tolist(), train.position.tolist()))
    assert not triples & held
    assert len(triples) == 6 * 4 * 3 - len(held)  # every other combination occurs
    test = generate(256, seed=0, split="heldout")
    got = set(zip(test.labels.colour.tolist(), test.labels.shape.tolist(),
                  test.labels.position.tolist()))  # fmt: skip
    assert got == held
    assert test.labels.colour_stated.all() and test.labels.position_stated.all()


def test_textured_backgrounds_keep_their_bucket():
    lab = sample_labels(4000, np.random.default_rng(2), split="all")
    bg = render_backgrounds(lab, np.random.default_rng(3))
    actual = DEFAULT_CONFIG.bucket(bg.mean(axis=(1, 2)))
    np.testing.assert_array_equal(actual, lab.bucket)
    textured = lab.texture > 0
    assert (bg[textured].std(axis=(1, 2)) > 0.01).all()  # textures are visible
    assert np.ptp(bg[~textured], axis=(1, 2)).max() == 0


def test_sample_for_prompt_follows_the_conditional_distribution():
    circles = sample_for_prompt("a circle", 600, seed=0)
    assert (circles.labels.shape == 0).all() and (circles.labels.bucket == 1).all()
    assert (circles.labels.colour == COLOURS.index("red")).mean() > 0.9
    assert set(circles.labels.texture.tolist()) <= {0, 4}
    prompt = "a big green ring on the left on a dark striped background"
    full = sample_for_prompt(prompt, 50, seed=1)
    lab = full.labels
    assert (lab.colour == 1).all() and (lab.shape == 3).all() and (lab.position == 0).all()
    assert (lab.size == 1).all() and (lab.bucket == 0).all() and (lab.texture == 1).all()
    assert full.captions == [prompt] * 50
    bright = sample_for_prompt("a square on a bright background", 200, seed=2)
    assert (bright.labels.bucket == BRIGHTNESS_BUCKETS.index("bright")).all()


def test_tokenizer_round_trip_padding_and_clip_text_model():
    tok = MiniTokenizer()
    assert tok.vocab_size == len(WORDS) + 3 and tok.pad_token_id == 0
    assert tok.eos_token_id == tok.vocab_size - 1 and tok.bos_token_id == tok.vocab_size - 2
    data = generate(128, seed=5, split="all")
    prompts = [*data.captions, ""]
    enc = tok(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True,
              return_tensors="pt")  # fmt: skip
    ids = enc.input_ids
    assert ids.shape == (129, MAX_LENGTH) and ids.dtype == torch.int64
    assert torch.equal(ids, tok.ids(prompts))
    assert tok.batch_decode(ids, skip_special_tokens=True) == prompts
    lengths = torch.tensor([len(p.split()) + 2 for p in prompts])
    assert torch.equal(enc.attention_mask.sum(1), lengths)
    assert (ids[:, 0] == tok.bos_token_id).all()
    rows = torch.arange(len(prompts))
    assert (ids[rows, lengths - 1] == tok.eos_token_id).all()
    assert ((ids == 0) == (enc.attention_mask == 0)).all()  # padding with <pad> = 0
    torch.manual_seed(0)
    model = CLIPTextModel(clip_text_config(tok, hidden_size=32, num_layers=1)).eval()
    with torch.no_grad():
        out = model(input_ids=ids[:4])
    assert out.last_hidden_state.shape == (4, MAX_LENGTH, 32)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[rows[:4], lengths[:4] - 1])


def test_tokenizer_save_and_load(tmp_path):
    tok = MiniTokenizer()
    tok.save_pretrained(tmp_path)
    again = MiniTokenizer.from_pretrained(tmp_path)
    assert torch.equal(again.ids("a red circle"), tok.ids("a red circle"))
    (tmp_path / "vocab.json").write_text('{"a": 0}')
    with pytest.raises(ValueError, match="vocabulary"):
        MiniTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: generate(0), "positive int"),
        (lambda: generate(4, seed=-1), "non-negative"),
        (lambda: generate(4, seed=(1, -2)), "non-negative"),
        (lambda: generate(4, split="test"), "split"),
        (lambda: parse_caption("a pink circle"), "vocabulary"),
        (lambda: parse_caption("a red on the left"), "grammar"),
        (lambda: parse_caption("a circle on a background"), "grammar"),
        (lambda: parse_caption("red circle"), "grammar"),
        (lambda: sample_for_prompt("", 4), "shape"),
        (lambda: GrammarConfig(p_typical=1.5), "p_typical"),
        (lambda: GrammarConfig(dark_below=0.8), "thresholds"),
        (lambda: GrammarConfig(typical_colours=(("star", "red"),)), "shape"),
        (lambda: GrammarConfig(held_out=tuple(("red", "ring", p) for p in POSITIONS)), "every"),
        (lambda: MiniTokenizer()("a pink circle"), "vocabulary"),
        (lambda: MiniTokenizer().ids("a red circle", max_length=4), "max_length"),
        (lambda: clip_text_config(hidden_size=30, num_heads=4), "divisible"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()
