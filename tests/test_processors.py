from __future__ import annotations

import pytest
import torch
from PIL import Image

from minigpt4.processors import build_processor, normalize_caption


def test_blip_caption_matches_the_original_rules():
    proc = build_processor({"name": "blip_caption", "max_words": 5})
    assert proc('A "Red" circle;  next to: a (blue) SQUARE! ~') == "a red circle next to"
    assert normalize_caption("one, two.\n") == "one, two"  # commas survive, trailing punctuation goes
    assert build_processor({"name": "blip_caption", "prompt": "a photo of "})("Cat.") == "a photo of cat"


def test_eval_processor_squashes_to_square():
    proc = build_processor({"name": "blip2_image_eval", "image_size": 32})
    out = proc(Image.new("RGB", (80, 20), (255, 0, 0)))
    assert out.shape == (3, 32, 32)
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    torch.testing.assert_close(out[:, 5, 5], (torch.tensor([1.0, 0.0, 0.0]) - mean) / std)


def test_train_processor_random_crop_and_deterministic_variant():
    img = Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
    rand = build_processor({"name": "blip2_image_train", "image_size": 32})
    torch.manual_seed(0)
    a, b = rand(img), rand(img)
    assert a.shape == (3, 32, 32) and not torch.equal(a, b)
    det = build_processor({"name": "blip2_image_train", "image_size": 32, "deterministic": True})
    evalp = build_processor({"name": "blip2_image_eval", "image_size": 32})
    assert torch.equal(det(img), evalp(img))


def test_grayscale_images_become_rgb():
    out = build_processor({"name": "blip2_image_eval", "image_size": 16})(Image.new("L", (20, 20), 128))
    assert out.shape == (3, 16, 16)


@pytest.mark.parametrize("name, key, value", [("blip2_image_train", "image_size", 0),
                                              ("blip2_image_eval", "image_size", -3),
                                              ("blip_caption", "max_words", 0),
                                              ("classifier_image_eval", "crop_pct", 0)])
def test_sizes_must_be_positive_and_the_error_names_the_processor_and_key(name, key, value):
    with pytest.raises(ValueError, match=f"processor '{name}': {key} must be a number > 0, got {value}"):
        build_processor({"name": name, key: value})
