"""Decoding uploads: formats, limits, EXIF orientation, Pillow modes; and RLE round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from rle_helpers import encode_mask, encode_masks
from service_helpers import blocks_image, encode

from service.errors import ApiError
from service.imaging import Limits, decode_image, sniff_format, to_tensor

LIMIT = 10_000_000

# pycocotools' decode under numpy 2: a third-party deprecation, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")


def _status(data: bytes, max_pixels: int = LIMIT) -> int:
    with pytest.raises(ApiError) as info:
        decode_image(data, Limits(max_pixels))
    return info.value.status


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_allowed_formats_decode_to_rgb_uint8_chw(fmt: str) -> None:
    pixels = blocks_image(1, 40, 56)
    data = encode(pixels, fmt)
    assert sniff_format(data) == fmt
    decoded = decode_image(data, Limits(LIMIT))
    assert decoded.tensor.dtype == torch.uint8
    assert tuple(decoded.tensor.shape) == (3, 40, 56)
    if fmt == "PNG":  # lossless
        assert torch.equal(decoded.tensor, torch.from_numpy(pixels).permute(2, 0, 1))


def test_exif_orientation_is_applied() -> None:
    pixels = blocks_image(2, 30, 50)  # 50 wide, 30 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    decoded = decode_image(encode(pixels, "JPEG", exif=exif.tobytes(), quality=95), Limits(LIMIT))
    assert (decoded.width, decoded.height) == (30, 50)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", 400),
        (b"\x00" * 64, 400),
        (b"not an image at all", 400),
        (b"GIF89a" + b"\x00" * 32, 415),
        (b"BM" + b"\x00" * 32, 415),
        (b"%PDF-1.7\n", 415),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 10, 400),
    ],
)
def test_bad_bytes_are_client_errors(data: bytes, status: int) -> None:
    assert _status(data) == status


def test_truncated_images_are_400() -> None:
    for fmt in ("PNG", "JPEG", "WEBP"):
        noise = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        data = encode(noise, fmt)
        for cut in (20, len(data) // 4, len(data) // 2, len(data) * 3 // 4):
            assert _status(data[:cut]) == 400, (fmt, cut)


def test_real_gif_is_415() -> None:
    assert _status(encode(blocks_image(4), "GIF")) == 415
    assert sniff_format(encode(blocks_image(4), "TIFF")) == "TIFF"


def test_pixel_limit_is_checked_from_the_header_before_decoding() -> None:
    # A 1-bit 20000 x 20000 PNG is a few kB on the wire and 400 MP once decoded.
    bomb = encode(Image.new("1", (20_000, 20_000)), "PNG")
    assert len(bomb) < 100_000
    assert _status(bomb, max_pixels=LIMIT) == 413
    assert _status(encode(blocks_image(5, 100, 100)), max_pixels=9_999) == 413


@pytest.mark.parametrize("mode", ["L", "LA", "P", "PA", "RGBA", "CMYK", "1", "I;16", "I", "F"])
def test_every_pillow_mode_becomes_rgb(mode: str) -> None:
    image = Image.fromarray(blocks_image(6, 12, 16)).convert("RGBA" if mode in ("PA", "LA") else "RGB")
    if mode in ("I;16", "I", "F"):
        image = Image.fromarray(np.full((12, 16), 257 * 200, dtype=np.uint16)).convert(mode)
    else:
        image = image.convert(mode)
    tensor = to_tensor(image)
    assert tensor.dtype == torch.uint8
    assert tuple(tensor.shape) == (3, 12, 16)
    if mode in ("I;16", "I"):
        assert int(tensor.max()) == 200  # 16-bit grey scaled onto 8 bits, not clipped to white


def test_i16_png_round_trip_through_decode() -> None:
    grey = Image.fromarray(np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000)
    assert grey.mode == "I;16"
    tensor = decode_image(encode(grey, "PNG"), Limits(LIMIT)).tensor
    assert int(tensor[0, 5, 7]) == round(47_000 / 257)


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (23, 1), (64, 48), (129, 257)])
def test_rle_round_trips_exactly(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    masks = torch.from_numpy(rng.random((5, *shape)) < 0.3)
    masks[0] = False  # empty
    masks[1] = True  # full
    for mask, rle in zip(masks, encode_masks(masks), strict=True):
        assert rle["size"] == list(shape)
        assert isinstance(rle["counts"], str)
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"]})
        assert np.array_equal(decoded, mask.numpy().astype(np.uint8))
    assert encode_masks(torch.zeros(0, 4, 4, dtype=torch.bool)) == []
    assert encode_mask(masks[2]) == encode_masks(masks)[2]
