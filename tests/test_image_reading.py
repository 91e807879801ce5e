"""weclip_hf.image_reading: what it imports (it ships with a saved model's remote code) and what the processor
module still exports of it. The reading rules themselves are tested through the processor
(tests/test_image_processing.py)."""

import sys

from transformers.dynamic_module_utils import get_imports, get_relative_imports

from weclip_hf import image_processing_weclip, image_reading


def test_imports_only_the_base_install_and_nothing_of_the_package():
    """Remote code and the base install (no ``train`` extra) read images with this module and `json_files` (its
    opener of regular files; the standard library only) alone (huggingface_hub: the HTTP client for URLs,
    transformers' own, which transformers requires)."""
    from weclip_hf import json_files

    third_party = set(get_imports(image_reading.__file__)) - set(sys.stdlib_module_names)
    assert third_party <= {"numpy", "torch", "PIL", "transformers", "huggingface_hub"}, third_party
    assert get_relative_imports(image_reading.__file__) == ["json_files"]
    assert set(get_imports(json_files.__file__)) <= set(sys.stdlib_module_names)
    assert get_relative_imports(json_files.__file__) == []


def test_a_fifo_or_folder_given_as_an_image_file_is_named_not_waited_on(tmp_path):
    """A FIFO given as an image (a path in a folder of images, a pipeline's input) blocked Image.open forever (here
    a writer opens it after 2 s, so that the old code ends); a folder raised IsADirectoryError, wrapped. Both are
    refused when opened, naming the file and what it is."""
    import os

    import pytest
    from conftest import release_fifo_later

    from weclip_hf.image_reading import UnreadableImageError, image_size, open_image

    fifo, folder = tmp_path / "fifo.png", tmp_path / "folder.png"
    os.mkfifo(fifo)
    folder.mkdir()
    for path, what in ((fifo, "a FIFO, socket or device"), (folder, "a folder")):
        for read in (open_image, lambda p: open_image(str(p)), lambda p: image_size(str(p))):
            release_fifo_later(path)
            with pytest.raises(
                UnreadableImageError, match=f"Cannot read file '{path}': .*it is {what}, not a file"
            ):
                read(path)


def test_the_processor_module_still_exports_the_public_reading_functions():
    for name in ("to_rgb_array", "image_size"):
        assert getattr(image_processing_weclip, name) is getattr(image_reading, name)
        assert name in image_processing_weclip.__all__


def test_unreadable_image_errors_pickle_as_they_are():
    """A DataLoader worker pickles the error it raises: the class needs its three arguments back ("missing 1
    required positional argument: 'reason'" turned it into a bare RuntimeError)."""
    import pickle

    from weclip_hf.data.decoding import UnreadableImageError as DatasetError
    from weclip_hf.image_reading import UnreadableImageError

    for error in (
        UnreadableImageError("file 'a.png'", "OSError: truncated"),
        DatasetError("row 3", "bad bytes"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error) and copy.source == error.source


def test_a_png_declaring_ten_gigapixels_is_refused_at_open_naming_it(tmp_path):
    """A 70-byte PNG whose header declares 100000 x 100000 pixels: Pillow refuses it when opened (over twice
    Image.MAX_IMAGE_PIXELS, a DecompressionBombError) before decoding anything; the error names the file (its
    message ended "attack.. Fix": the period doubled)."""
    import io
    import struct
    import zlib

    import pytest
    from PIL import Image

    from weclip_hf.image_reading import UnreadableImageError, image_size, open_image

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    header = data.find(b"IHDR")
    struct.pack_into(">II", data, header + 4, 100_000, 100_000)
    struct.pack_into(">I", data, header + 17, zlib.crc32(bytes(data[header : header + 17])))
    path = tmp_path / "bomb.png"
    path.write_bytes(bytes(data))
    for read in (open_image, image_size):
        with pytest.raises(
            UnreadableImageError,
            match=rf"^Cannot read file '{path}': DecompressionBombError: Image size \(10000000000 pixels\) exceeds "
            r"limit of 178956970 pixels, could be decompression bomb DOS attack\. Fix or remove it\.$",
        ):
            read(str(path))
