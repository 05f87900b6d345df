"""Headless Chromium for the HTML tests: the page's DOM after its scripts ran, and a screenshot's colours."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


class Chromium:
    """Debian's `chromium`, headless; a test without it skips, or fails where CI requires it."""

    def __init__(self, tmp_path: Path) -> None:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if not binary:
            if os.environ.get("FOUNDRY_TELEMETRY_REQUIRE_CHROMIUM") == "1":
                pytest.fail("Chromium is required here but not installed")
            pytest.skip("no chromium")
        self.tmp_path = tmp_path
        self.flags = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync", "--no-first-run",
                      f"--user-data-dir={tmp_path / 'u'}"]

    def dom(self, page: Path) -> str:
        return subprocess.run([*self.flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                              timeout=120).stdout

    def screenshot_colors(self, page: Path, size: str) -> int:
        """Distinct colours of a `size` ("W,H") screenshot: 0 when none was written."""
        shot = self.tmp_path / "shot.png"
        subprocess.run([*self.flags, f"--window-size={size}", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, timeout=120)
        return png_colors(shot) if shot.exists() else 0


def png_colors(path: Path) -> int:
    """Distinct colours in a PNG (8-bit RGB/RGBA, as Chromium writes): enough to tell a chart from a blank."""
    import struct
    import zlib

    data = path.read_bytes()
    pos, chunks = 8, {}
    idat = b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IDAT":
            idat += body
        else:
            chunks[kind] = body
        pos += 12 + length
    width, height, depth, ctype = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    bpp = {2: 3, 6: 4}[ctype]
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    colors = set()
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if y % 4 == 0:
            colors.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp * 4))
        prev = line
    return len(colors)
