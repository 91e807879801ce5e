"""weclip_hf.visualization's label colours, label map PNGs, names, sizes and overlay panels, against their
docstrings (a mutation review found these unchecked: each test names the change that passed before)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from weclip_hf.visualization import (
    PALETTE,
    VOID_COLOUR,
    as_label_array,
    blend,
    display_size,
    label_colours,
    label_map_image,
    label_name,
)


def test_negative_ids_are_void_whatever_the_ignore_index():
    """Any negative id is shown in VOID_COLOUR, not only the ignore index (colouring -1 as id 0 passed)."""
    colours = label_colours(np.array([[-1, -100, 0, 255]]), ignore_index=255)
    assert (colours[0, [0, 1, 3]] == VOID_COLOUR).all() and (colours[0, 2] == PALETTE[0]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_label_maps_of_floats_are_refused(dtype):
    """A label map must hold integer ids (accepting floats passed: 2.7 became id 2)."""
    with pytest.raises(ValueError, match=r"labels must hold integer ids, got dtype float"):
        as_label_array(np.array([[0.0, 2.7]], dtype))


def test_label_map_pngs_refuse_negative_ids_and_keep_large_ones_of_a_small_model():
    """A PNG holds ids 0..65535: -1 is refused (checking the upper end only passed: -1 was written as 255); an id
    above 255 gets a 16-bit PNG also when num_labels says 256 or fewer (it was cut to 8 bits: 300 -> 44)."""
    with pytest.raises(ValueError, match=r"ids 0\.\.65535 for a PNG, got -1\.\.2"):
        label_map_image(np.array([[-1, 2]], np.int64))
    image = label_map_image(np.array([[0, 300]], np.int64), num_labels=21)
    png = io.BytesIO()
    image.save(png, format="PNG")
    assert image.mode == "I;16" and np.asarray(Image.open(png)).tolist() == [[0, 300]]


def test_label_names_read_string_keys_of_a_saved_config():
    """id2label read from a config.json has string keys: they name the ids (reading int keys only passed)."""
    assert label_name(3, {"3": "cat"}) == "cat" and label_name(3, {3: "dog"}) == "dog"
    assert label_name(4, {"3": "cat"}) == "4" and label_name(255, {"255": "x"}) == "ignore"


def test_display_size_keeps_a_long_thin_image_within_max_side():
    """The whole upscaling factor is capped so that the long side stays at most max_side (dropping the cap passed:
    100 x 700 was shown 300 x 2100)."""
    assert display_size(100, 700) == (100, 700) and display_size(60, 300) == (120, 600)


def test_resize_rgb_enlarges_by_nearest_neighbour_and_shrinks_bilinearly():
    """Enlarged pixels stay sharp (only the image's values); shrunk ones are averaged (nearest both ways passed)."""
    from weclip_hf.visualization import resize_rgb

    checks = (np.indices((8, 8)).sum(0) % 2 * 255).astype(np.uint8)[..., None].repeat(3, -1)
    assert set(np.unique(resize_rgb(checks, (16, 16)))) == {0, 255}
    shrunk = resize_rgb(checks, (4, 4))
    assert shrunk.shape == (4, 4, 3) and ((shrunk > 60) & (shrunk < 195)).all()


def test_blend_paints_the_colours_at_opacity_alpha():
    """alpha is the colours' opacity (swapping the weights passed)."""
    image, colours = np.zeros((1, 1, 3), np.uint8), np.full((1, 1, 3), 200, np.uint8)
    assert blend(image, colours, alpha=0.25).tolist() == [[[50, 50, 50]]]


def test_heat_colours_run_from_blue_to_red():
    """The "jet" colours: blue at 0, green at 1/2, red at 1 (the reversed order passed)."""
    from weclip_hf.visualization import heat_colours

    assert heat_colours(np.array([0.0, 0.5, 1.0])).tolist() == [[0, 0, 128], [128, 255, 128], [128, 0, 0]]


def test_cam_heatmap_upsamples_bilinearly():
    """A CAM [1, 2] over a 1 x 4 image: bilinear without aligned corners, 0, 1/4, 3/4, 1 (nearest passed)."""
    from weclip_hf.visualization import cam_heatmap, heat_colours

    shown = cam_heatmap(np.zeros((1, 4, 3), np.uint8), torch.tensor([[0.0, 1.0]]), alpha=1.0)
    assert (shown[0] == heat_colours(np.array([0.0, 0.25, 0.75, 1.0]))).all()


def test_overlay_figure_refuses_a_label_map_of_another_size():
    """Label maps are drawn over the image pixel for pixel (without the check, one of another size was stretched)."""
    from weclip_hf.visualization import overlay_figure

    with pytest.raises(ValueError, match=r"label map 'prediction' has size \(2, 2\), the image \(2, 3\)"):
        overlay_figure(np.zeros((2, 3, 3), np.uint8), {"prediction": np.zeros((2, 2), np.uint8)}, {0: "bg"})


def test_present_class_cams_name_each_present_foreground_class():
    """cams [C, h, w] and class_labels [C] are over the foreground classes, ids 1..C (naming them by 0..C-1 passed:
    the CAM of class 2 was titled class 1's name)."""
    from weclip_hf.visualization import present_class_cams

    cams = torch.arange(8.0).view(2, 2, 2)
    named = present_class_cams(cams, torch.tensor([0.0, 1.0]), {0: "background", 1: "cat", 2: "dog"})
    assert list(named) == ["dog"] and torch.equal(named["dog"], cams[1])


@pytest.mark.parametrize("image", [np.zeros((2, 3, 3), np.float32), np.zeros((2, 3, 4), np.uint8)])
def test_overlay_figure_refuses_an_image_other_than_uint8_rgb(image):
    """The image must be uint8 [H, W, 3] (checking its axes only passed: floats and RGBA reached PIL)."""
    from weclip_hf.visualization import overlay_figure

    with pytest.raises(ValueError, match=r"image must be a uint8 \[H, W, 3\] array"):
        overlay_figure(image, {}, {0: "bg"})
