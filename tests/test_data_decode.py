"""Every Pillow image mode maps to the right 8-bit RGB, or is refused naming the file."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import make_tree
from PIL import Image

from cifarnet.cli.main import main
from cifarnet.config.schema import DataConfig
from cifarnet.data.datasets import load_data
from cifarnet.data.decode import decode_bytes
from cifarnet.errors import DataError

P = Path("x.png")


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def grey16() -> np.ndarray:
    """A 32x32 uint16 ramp with known high bytes: row r holds r * 2048 + column * 7."""
    return (np.arange(32)[:, None] * 2048 + np.arange(32)[None, :] * 7).astype(np.uint16)


def expected_grey(v16: np.ndarray) -> np.ndarray:
    return np.repeat((v16 >> 8).astype(np.uint8)[..., None], 3, axis=2)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("dtype", ["<u2", ">u2"])
def test_16_bit_grey_keeps_the_high_byte(fmt, dtype) -> None:
    v = grey16()
    im = Image.fromarray(v.astype(dtype))
    assert im.mode in ("I;16", "I;16B")
    out = decode_bytes(encode(im, fmt), P)
    assert np.array_equal(out, expected_grey(v))
    assert out.max() == 63705 >> 8 == 248 and out.std() > 50  # not all white: the reported fault


def test_16_bit_pgm_read_as_mode_i_is_scaled() -> None:
    v = grey16()
    pgm = b"P5\n32 32\n65535\n" + v.astype(">u2").tobytes()
    assert Image.open(io.BytesIO(pgm)).mode == "I"
    assert np.array_equal(decode_bytes(pgm, Path("x.pgm")), expected_grey(v))
    # maxval 1023: Pillow scales the samples to 0..65535 first; 1023 -> 255, 512 -> 128
    pgm10 = b"P5\n32 32\n1023\n" + np.full((32, 32), 512, ">u2").tobytes()
    assert (decode_bytes(pgm10, Path("x.pgm")) == 128).all()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(
        ">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def test_16_bit_rgb_png_keeps_the_high_byte() -> None:
    rgb = np.zeros((32, 32, 3), ">u2")
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 32768, 511
    raw = b"".join(b"\0" + row.tobytes() for row in rgb)
    png = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, 16, 2,
                                                                    0, 0, 0))
           + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
    out = decode_bytes(png, P)
    assert out[0, 0].tolist() == [255, 128, 1]


def test_alpha_is_composited_over_black() -> None:
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = [200, 100, 50]
    rgba[..., 3] = 255
    rgba[0, :, 3] = 0       # transparent row -> black
    rgba[1, :, 3] = 128     # half -> round(c * 128 / 255)
    out = decode_bytes(encode(Image.fromarray(rgba, "RGBA"), "PNG"), P)
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[1, 0].tolist() == [100, 50, 25]
    assert out[5, 5].tolist() == [200, 100, 50]


def test_grey_with_alpha_and_palette_with_transparency() -> None:
    la = Image.fromarray(np.stack([np.full((32, 32), 90, np.uint8),
                                   np.full((32, 32), 255, np.uint8)], -1), "LA")
    la.putpixel((0, 0), (90, 0))
    out = decode_bytes(encode(la, "PNG"), P)
    assert out[0, 1].tolist() == [90, 90, 90] and out[0, 0].tolist() == [0, 0, 0]

    p = Image.new("P", (32, 32), 0)
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((3, 0), 1)
    out = decode_bytes(encode(p, "PNG", transparency=1), P)
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 3].tolist() == [0, 0, 0]
    pa = decode_bytes(encode(p.convert("PA"), "TIFF"), Path("x.tif"))
    assert pa[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("mode,fmt,colour,rgb", [
    ("1", "PNG", 1, (255, 255, 255)),
    ("L", "PNG", 77, (77, 77, 77)),
    ("RGB", "BMP", (10, 20, 30), (10, 20, 30)),
    ("CMYK", "TIFF", (0, 255, 255, 0), (255, 0, 0)),
    ("YCbCr", "TIFF", (76, 85, 255), (254, 0, 0)),
    ("LAB", "TIFF", (255, 128, 128), (254, 255, 254)),
])
def test_colour_modes_convert_to_rgb(mode, fmt, colour, rgb) -> None:
    out = decode_bytes(encode(Image.new(mode, (32, 32), colour), fmt), Path(f"x.{fmt}"))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert tuple(out[7, 7].tolist()) == rgb


def test_cmyk_jpeg_converts() -> None:
    data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=100)
    r, g, b = decode_bytes(data, Path("x.jpg"))[7, 7].tolist()
    assert r > 240 and g < 15 and b < 15


@pytest.mark.parametrize("mode,value,word", [("I", 70000, "32-bit integer"),
                                             ("F", 0.5, "floating-point")])
def test_modes_without_an_8_bit_range_are_refused(mode, value, word) -> None:
    with pytest.raises(DataError, match=rf"x\.tif: mode {mode} \({word}\)"):
        decode_bytes(encode(Image.new(mode, (32, 32), value), "TIFF"), Path("x.tif"))


def test_exif_orientation_is_applied() -> None:
    a = np.zeros((32, 32, 3), np.uint8)
    a[0, 31] = 255                      # top right corner white
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6                    # shown rotated 90 degrees clockwise
    out = decode_bytes(encode(im, "PNG", exif=exif), P)
    assert out[31, 31].tolist() == [255, 255, 255] and out[0, 31].tolist() == [0, 0, 0]


def test_first_frame_of_a_multi_frame_gif() -> None:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_bytes(data, Path("x.gif"))[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("data,match", [
    (b"", "cannot decode image"),
    (b"not an image at all", "cannot decode image"),
])
def test_bytes_that_are_not_an_image(data, match) -> None:
    with pytest.raises(DataError, match=rf"^x\.png: {match}"):
        decode_bytes(data, P)


def test_truncated_jpeg_is_refused() -> None:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(DataError, match=r"^x\.jpg: cannot decode image"):
        decode_bytes(data[: len(data) // 2], Path("x.jpg"))


def test_wrong_size_is_refused_before_decoding() -> None:
    with pytest.raises(DataError, match=r"x\.png: image is 4000x3000, expected 32x32"):
        decode_bytes(encode(Image.new("L", (4000, 3000)), "PNG"), P)


def test_a_16_bit_tree_trains_on_the_right_pixels_and_blank_data_is_refused(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 4, 2, classes=["a", "b"])
    for f in sorted(tree.glob("*/*/*.png")):
        rgb = np.asarray(Image.open(f)).astype(np.uint16)
        Image.fromarray(rgb[..., 0] * 257).save(f)  # 16-bit grey from the red channel
    d = load_data(DataConfig(path=str(tree)))
    first = min((tree / "train" / "a").glob("*.png"))
    red = (np.asarray(Image.open(first)).astype(np.uint16) >> 8).astype(np.uint8)
    assert np.array_equal(d.train.images[0][..., 0], red)
    assert min(d.std) > 0.05

    blank = make_tree(tmp_path / "blank", 4, 2, classes=["a", "b"])
    for f in blank.glob("*/*/*.png"):
        Image.new("RGB", (32, 32), (255, 255, 255)).save(f)
    r = CliRunner().invoke(main, ["train", "--data", str(blank)])
    assert r.exit_code == 2
    assert "no spread in channel R (std 0 of 255, mean 255.0)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_refused_mode_in_a_tree_names_the_file_and_exits_2(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 3, 2, classes=["a", "b"])
    bad = tree / "train" / "b" / "float.tif"
    Image.new("F", (32, 32), 0.5).save(bad)
    r = CliRunner().invoke(main, ["train", "--data", str(tree)])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {bad}: mode F")


@pytest.mark.parametrize("im,rgb", [
    (Image.new("HSV", (32, 32), (0, 255, 255)), (255, 0, 0)),
    (Image.new("RGBX", (32, 32), (1, 2, 3, 0)), (1, 2, 3)),
    (Image.new("La", (32, 32), (100, 128)), (100, 100, 100)),      # premultiplied grey
    (Image.new("RGBa", (32, 32), (50, 50, 50, 128)), (50, 50, 50)),  # premultiplied colour
    (Image.new("I;16N", (32, 32), 0x1234), (0x12, 0x12, 0x12)),
])
def test_in_memory_modes(im, rgb) -> None:
    from cifarnet.data.decode import to_rgb8

    out = to_rgb8(im, P, None)
    assert out.dtype == np.uint8 and tuple(out[3, 3].tolist()) == rgb


def test_mode_i_outside_pgm_is_refused_even_with_small_values() -> None:
    from cifarnet.data.decode import to_rgb8

    with pytest.raises(DataError, match="mode I"):
        to_rgb8(Image.new("I", (32, 32), 100), P, "TIFF")
