"""A corpus of bad and awkward inputs for the ingest stage, with the expected outcome of each.

`build_corpus(root)` writes an image folder (root/<class>/<file>) and returns the expected
quarantine count per reason code; `build_csv_corpus(root)` does the same for a CSV source.
Each kind of input is a small writer in `KINDS` (or `CSV_KINDS`) that returns the paths it
created, as ingest reports them, with the reason each must be quarantined for (None: kept),
so a test can check every item and not only the totals. Images are tiny (16x16) so the whole
corpus ingests in well under a second.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

SIDE = 16
CLASSES = ["cat", "dog", "empty"]  # ingest.classes for the folder corpus; "zebra" is unknown
# Paths (as ingest reports them) of kept items whose pixels the tests check.
GRAY16 = "cat/gray16.png"
RGBA = "cat/rgba.png"
PALETTE = "cat/palette_transparent.png"
CMYK = "cat/cmyk.jpg"
EXIF = "cat/exif_rotated.jpg"
GRAY_ALPHA = "dog/gray_alpha.png"
GIF = "dog/two_frames.gif"
DUPLICATES = ("dog/dup_a.png", "dog/dup_b.png")
LAB = "dog/lab.tif"


@dataclass(frozen=True)
class Case:
    kind: str
    path: str  # as ingest writes it in the manifest or quarantine.csv
    reason: str | None  # None: must be kept


Outcomes = list[tuple[str, str | None]]  # (path, reason or None)
Writer = Callable[[Path], Outcomes]  # writes its files under the root
CsvWriter = Callable[[Path], tuple[list[str], Outcomes]]  # also returns its CSV lines
KINDS: dict[str, Writer] = {}
CSV_KINDS: dict[str, CsvWriter] = {}


def kind(registry: dict, name: str):
    def register(fn):
        registry[name] = fn
        return fn

    return register


# ---- pixel patterns -------------------------------------------------------------------


def pattern(seed: int = 0, side: int = SIDE) -> np.ndarray:
    """A deterministic grey image with some structure (JPEG-friendly blocks)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 4), dtype=np.uint8)
    return np.kron(blocks, np.ones((side // 4, side // 4), np.uint8))


def asymmetric() -> np.ndarray:
    """Top-left white, top-right mid grey, bottom black: every rotation or flip differs."""
    a = np.zeros((SIDE, SIDE), np.uint8)
    a[: SIDE // 2, : SIDE // 2] = 255
    a[: SIDE // 2, SIDE // 2 :] = 128
    return a


def _save(path: Path, img: Image.Image, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def zero_bilevel_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of zeros: a huge declared size that compresses to a few kB."""
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row * 500) for _ in range(height // 500)) + z.compress(row * (height % 500)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


# ---- the image-folder corpus ----------------------------------------------------------


@kind(KINDS, "good images in two classes, one in a nested folder")
def _good(root: Path):
    out = []
    for c, cls in enumerate(("cat", "dog")):
        for i in range(3):
            _save(root / cls / f"good_{i}.png", Image.fromarray(pattern(10 * c + i)))
            out.append((f"{cls}/good_{i}.png", None))
    _save(root / "cat" / "sub" / "nested.png", Image.fromarray(pattern(99)))
    return out + [("cat/sub/nested.png", None)]


@kind(KINDS, "truncated PNG (cut in the image data)")
def _truncated_png(root: Path):
    _save(root / "cat" / "full.png", Image.fromarray(pattern(1)))
    data = (root / "cat" / "full.png").read_bytes()
    (root / "cat" / "full.png").unlink()
    (root / "cat" / "truncated.png").write_bytes(data[: len(data) // 2])
    return [("cat/truncated.png", "truncated")]


def _jpeg_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    noise = np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE), np.uint8)
    Image.fromarray(noise).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@kind(KINDS, "truncated JPEG (cut in the scan data)")
def _truncated_jpeg(root: Path):
    data = _jpeg_bytes(2)
    (root / "cat" / "truncated.jpg").write_bytes(data[: int(len(data) * 0.85)])
    return [("cat/truncated.jpg", "truncated")]


@kind(KINDS, "truncated JPEG (cut in the header tables)")
def _truncated_jpeg_header(root: Path):
    data = _jpeg_bytes(3)
    (root / "cat" / "truncated_header.jpg").write_bytes(data[:200])
    return [("cat/truncated_header.jpg", "truncated")]


@kind(KINDS, "corrupt PNG (a flipped byte in the compressed data)")
def _corrupt_png(root: Path):
    _save(root / "dog" / "corrupt.png", Image.fromarray(pattern(4)))
    data = bytearray((root / "dog" / "corrupt.png").read_bytes())
    data[data.index(b"IDAT") + 10] ^= 0xFF
    (root / "dog" / "corrupt.png").write_bytes(bytes(data))
    return [("dog/corrupt.png", "corrupt")]


@kind(KINDS, "zero-byte file")
def _empty(root: Path):
    (root / "cat" / "empty.png").write_bytes(b"")
    return [("cat/empty.png", "empty_file")]


@kind(KINDS, "text file named .png")
def _text(root: Path):
    (root / "cat" / "notes.png").write_text("not an image\n")
    return [("cat/notes.png", "not_an_image")]


@kind(KINDS, "JPEG named .png (format comes from the bytes, not the name)")
def _misnamed(root: Path):
    (root / "dog" / "really_a_jpeg.png").write_bytes(_jpeg_bytes(5))
    return [("dog/really_a_jpeg.png", None)]


@kind(KINDS, "CMYK JPEG (pure red)")
def _cmyk(root: Path):
    _save(root / CMYK, Image.new("CMYK", (SIDE, SIDE), (0, 255, 255, 0)), quality=95)
    return [(CMYK, None)]


@kind(KINDS, "16-bit greyscale PNG (top half 65535, bottom half 32896)")
def _gray16(root: Path):
    a = np.full((SIDE, SIDE), 32896, np.uint16)
    a[: SIDE // 2] = 65535
    _save(root / GRAY16, Image.fromarray(a))
    return [(GRAY16, None)]


@kind(KINDS, "palette PNG with a transparent entry (left transparent, right grey 100)")
def _palette(root: Path):
    a = np.ones((SIDE, SIDE), np.uint8)
    a[:, SIDE // 2 :] = 2
    img = Image.fromarray(a, "P")
    img.putpalette([0, 0, 0, 200, 200, 200, 100, 100, 100])
    _save(root / PALETTE, img, transparency=1)
    return [(PALETTE, None)]


@kind(KINDS, "RGBA PNG (grey 200; top opaque, bottom transparent)")
def _rgba(root: Path):
    a = np.full((SIDE, SIDE, 4), 200, np.uint8)
    a[: SIDE // 2, :, 3] = 255
    a[SIDE // 2 :, :, 3] = 0
    _save(root / RGBA, Image.fromarray(a, "RGBA"))
    return [(RGBA, None)]


@kind(KINDS, "greyscale+alpha PNG (grey 200; left opaque, right alpha 128)")
def _gray_alpha(root: Path):
    a = np.full((SIDE, SIDE, 2), 200, np.uint8)
    a[:, : SIDE // 2, 1] = 255
    a[:, SIDE // 2 :, 1] = 128
    _save(root / GRAY_ALPHA, Image.fromarray(a, "LA"))
    return [(GRAY_ALPHA, None)]


@kind(KINDS, "EXIF-rotated JPEG (orientation 6: stored turned 90 degrees left)")
def _exif(root: Path):
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    stored = np.ascontiguousarray(np.rot90(asymmetric(), 1))
    _save(root / EXIF, Image.fromarray(stored), exif=exif.tobytes(), quality=95)
    return [(EXIF, None)]


@kind(KINDS, "two-frame GIF (first frame white, second black)")
def _gif(root: Path):
    white = Image.fromarray(np.full((SIDE, SIDE), 255, np.uint8))
    black = Image.fromarray(np.zeros((SIDE, SIDE), np.uint8))
    white.save(root / GIF, save_all=True, append_images=[black])
    return [(GIF, None)]


@kind(KINDS, "BMP and TIFF")
def _bmp_tiff(root: Path):
    _save(root / "dog" / "plain.bmp", Image.fromarray(pattern(6)))
    _save(root / "dog" / "plain.tif", Image.fromarray(pattern(7)))
    return [("dog/plain.bmp", None), ("dog/plain.tif", None)]


@kind(KINDS, "CIELAB TIFF (mid grey)")
def _lab(root: Path):
    _save(root / LAB, Image.new("LAB", (SIDE, SIDE), (128, 128, 128)))
    return [(LAB, None)]


@kind(KINDS, "non-square image (resized, not cropped)")
def _non_square(root: Path):
    _save(root / "dog" / "wide.png", Image.fromarray(np.tile(pattern(8), (1, 3))))
    return [("dog/wide.png", None)]


@kind(KINDS, "1x1 image")
def _tiny(root: Path):
    _save(root / "cat" / "one_pixel.png", Image.new("L", (1, 1), 255))
    return [("cat/one_pixel.png", "too_small")]


@kind(KINDS, "decompression bomb past Pillow's own limit (20000x20000, 1-bit)")
def _bomb(root: Path):
    (root / "cat" / "bomb.png").write_bytes(zero_bilevel_png(20000, 20000))
    return [("cat/bomb.png", "too_large")]


@kind(KINDS, "decompression bomb between Pillow's warning and error sizes (10000x9000)")
def _bomb_warning(root: Path):
    (root / "cat" / "bomb_warning.png").write_bytes(zero_bilevel_png(10000, 9000))
    return [("cat/bomb_warning.png", "too_large")]


@kind(KINDS, "decompression bomb past ingest.max_pixels only (7000x6000, 1-bit)")
def _bomb_max_pixels(root: Path):
    (root / "dog" / "bomb.png").write_bytes(zero_bilevel_png(7000, 6000))
    return [("dog/bomb.png", "too_large")]


@kind(KINDS, "class folder not in ingest.classes")
def _unknown_class(root: Path):
    for i in range(2):
        _save(root / "zebra" / f"z{i}.png", Image.fromarray(pattern(20 + i)))
    return [("zebra/z0.png", "unknown_label"), ("zebra/z1.png", "unknown_label")]


@kind(KINDS, "non-UTF-8 file name")
def _non_utf8_file(root: Path):
    with open(os.fsencode(root / "cat") + b"/\xff\xfe.png", "wb") as f:
        Image.fromarray(pattern(30)).save(f, "PNG")
    return [("cat/\\xff\\xfe.png", "non_utf8_name")]


@kind(KINDS, "non-UTF-8 class folder name (one entry, its files are not read)")
def _non_utf8_dir(root: Path):
    folder = os.fsencode(root) + b"/caf\xe9"
    os.mkdir(folder)
    with open(folder + b"/x.png", "wb") as f:
        Image.fromarray(pattern(31)).save(f, "PNG")
    return [("caf\\xe9", "non_utf8_name")]


@kind(KINDS, "symlink to an image outside the root")
def _link_outside(root: Path):
    outside = root.parent / f"{root.name}-outside" / "secret.png"
    _save(outside, Image.fromarray(pattern(40)))
    os.symlink(outside, root / "cat" / "outside_link.png")
    return [("cat/outside_link.png", "outside_root")]


@kind(KINDS, "relative symlink to an image inside the root")
def _link_inside(root: Path):
    os.symlink("../cat/good_0.png", root / "dog" / "inside_link.png")
    return [("dog/inside_link.png", None)]


@kind(KINDS, "broken symlink")
def _link_broken(root: Path):
    os.symlink("no_such_file.png", root / "dog" / "broken_link.png")
    return [("dog/broken_link.png", "missing_file")]


@kind(KINDS, "symlink loop")
def _link_loop(root: Path):
    os.symlink("loop_b.png", root / "dog" / "loop_a.png")
    os.symlink("loop_a.png", root / "dog" / "loop_b.png")
    return [("dog/loop_a.png", "missing_file"), ("dog/loop_b.png", "missing_file")]


@kind(KINDS, "directory symlink at the root (a class folder twice)")
def _link_dir(root: Path):
    os.symlink("cat", root / "cat_again", target_is_directory=True)
    return [("cat_again", "linked_dir")]


@kind(KINDS, "named pipe in a class folder")
def _fifo(root: Path):
    os.mkfifo(root / "dog" / "pipe.png")
    return [("dog/pipe.png", "not_a_file")]


@kind(KINDS, "empty class folder (listed in empty_classes, nothing quarantined)")
def _empty_class(root: Path):
    (root / "empty").mkdir()
    return []


@kind(KINDS, "identical bytes under two names (both kept)")
def _duplicate(root: Path):
    data = (root / "cat" / "good_1.png").read_bytes()
    for p in DUPLICATES:
        (root / p).write_bytes(data)
    return [(p, None) for p in DUPLICATES]


@kind(KINDS, "file at the root, not in a class folder")
def _stray(root: Path):
    _save(root / "stray.png", Image.fromarray(pattern(50)))
    return [("stray.png", "not_in_class_folder")]


def write_corpus(root: Path) -> list[Case]:
    """Write the image-folder corpus under `root`; return every input with its outcome."""
    root.mkdir(parents=True, exist_ok=True)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(exist_ok=True)
    return [Case(name, path, reason) for name, write in KINDS.items() for path, reason in write(root)]


def expected_counts(cases: list[Case]) -> dict[str, int]:
    """Quarantine counts per reason code, as ingest's metrics `by_reason` should read."""
    return dict(sorted(Counter(c.reason for c in cases if c.reason).items()))


def build_corpus(root: Path) -> dict[str, int]:
    """Write the image-folder corpus; return the expected quarantine count per reason."""
    return expected_counts(write_corpus(root))


# ---- the CSV corpus -------------------------------------------------------------------

CSV_NAME = "labels.csv"


@kind(CSV_KINDS, "good rows with groups (one with an empty group, one padded with spaces)")
def _csv_good(root: Path):
    for i, name in enumerate(("a0", "a1", "b0", "b1", "b2")):
        _save(root / "img" / f"{name}.png", Image.fromarray(pattern(60 + i)))
    rows = ["img/a0.png,a,g1", "img/a1.png,a,g1", "img/b0.png,b,g2", "img/b1.png,b,", " img/b2.png , b ,g2"]
    return rows, [
        ("img/a0.png", None),
        ("img/a1.png", None),
        ("img/b0.png", None),
        ("img/b1.png", None),
        ("img/b2.png", None),
    ]


@kind(CSV_KINDS, "the same path twice, and once more spelled ./img/...")
def _csv_duplicate(root: Path):
    return (["img/a0.png,a,g1", "./img/a1.png,a,g1"], [("img/a0.png", "duplicate_id"), ("img/a1.png", "duplicate_id")])


@kind(CSV_KINDS, "a path to a file that does not exist")
def _csv_missing(root: Path):
    return ["img/nope.png,a,g3"], [("img/nope.png", "missing_file")]


@kind(CSV_KINDS, "../ and absolute paths escaping the CSV's folder")
def _csv_escape(root: Path):
    outside = root.parent / f"{root.name}-outside.png"
    _save(outside, Image.fromarray(pattern(70)))
    return (
        [f"../{outside.name},a,g3", f"{outside},a,g3"],
        [(f"../{outside.name}", "outside_root"), (str(outside), "outside_root")],
    )


@kind(CSV_KINDS, "a symlink in the folder that points outside it")
def _csv_link_out(root: Path):
    os.symlink(root.parent / f"{root.name}-outside.png", root / "img" / "link.png")
    return ["img/link.png,b,g3"], [("img/link.png", "outside_root")]


@kind(CSV_KINDS, "an empty label: not bad input, an unlabeled image (kept, label None)")
def _csv_no_label(root: Path):
    _save(root / "img" / "u0.png", Image.fromarray(pattern(65)))
    return ["img/u0.png, ,g4"], [("img/u0.png", None)]


@kind(CSV_KINDS, "an empty path")
def _csv_no_path(root: Path):
    return [",a,g4"], [("<line 14>", "missing_path")]


@kind(CSV_KINDS, "a path to a folder")
def _csv_folder(root: Path):
    return ["img,a,g4"], [("img", "not_a_file")]


@kind(CSV_KINDS, "a truncated image")
def _csv_truncated(root: Path):
    _save(root / "img" / "full.png", Image.fromarray(pattern(71)))
    data = (root / "img" / "full.png").read_bytes()
    (root / "img" / "full.png").unlink()
    (root / "img" / "cut.png").write_bytes(data[: len(data) // 2])
    return ["img/cut.png,b,g5"], [("img/cut.png", "truncated")]


def write_csv_corpus(root: Path) -> list[Case]:
    """Write `root/labels.csv` and its images; return every row with its outcome.

    Rows are written in registry order, so the empty-path row's line number is fixed.
    """
    root.mkdir(parents=True, exist_ok=True)
    lines, cases = ["path,label,group"], []
    for name, write in CSV_KINDS.items():
        rows, outcomes = write(root)
        lines += rows
        cases += [Case(name, path, reason) for path, reason in outcomes]
    (root / CSV_NAME).write_text("\n".join(lines) + "\n")
    return cases


def build_csv_corpus(root: Path) -> dict[str, int]:
    """Write the CSV corpus; return the expected quarantine count per reason."""
    return expected_counts(write_csv_corpus(root))
