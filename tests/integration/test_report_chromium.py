"""The risk report in headless Chromium (Debian package `chromium`): it renders, draws, and logs no error.

The page is made from scripts/report_demo_data.py's twelve weeks (with the injection host name) and
its advisory pairs. Set WARD_REPORT_SCREENSHOT=FILE.png to keep the screenshot for review.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
import report_demo_data

from agent.central.report import report_data
from agent.central.report_html import render_html

NOW = 1_767_225_600.0
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="chromium is not installed (apt-get install chromium)")
HEADINGS = ("Weekly trends", "Inventory by role and risk", "Devices with advisories",
            "Open findings by kind and by ward", "Segmentation violations", "Sensors", "Definitions")


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    report_demo_data.fill(folder / "demo.db", NOW, hostile=True).close()
    pairs = report_demo_data.advisory_pairs(NOW)
    conn = sqlite3.connect(folder / "demo.db")
    data = report_data(conn, NOW, 12, pairs=lambda _conn: pairs)
    conn.close()
    path = folder / "report.html"
    path.write_text(render_html(data), encoding="utf-8")
    return path


def _chromium(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = page.parent / "profile"
    return subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args,
                           page.as_uri()], capture_output=True, text=True, timeout=180, check=False)


def _pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB(A) rows of an 8-bit truecolour PNG (what Chromium writes); no interlace."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, header = 8, [], b""
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        body = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0
    size = 3 if colour == 2 else 4
    raw, stride, rows, previous = zlib.decompress(b"".join(chunks)), width * size, [], bytearray(width * size)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - size] if i >= size else 0
            up, corner = previous[i], previous[i - size] if i >= size else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows


def test_screenshot_shows_a_drawn_page(page: Path) -> None:
    """The screenshot is 1280 px wide and full of colour: charts, pills and text, not a blank page."""
    shot = page.parent / "report.png"
    done = _chromium(page, f"--screenshot={shot}", "--window-size=1280,4000", "--hide-scrollbars")
    assert shot.is_file(), done.stderr[-2000:]
    if os.environ.get("WARD_REPORT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["WARD_REPORT_SCREENSHOT"])
    width, height, rows = _pixels(shot.read_bytes())
    size = len(rows[0]) // width
    colours = {row[i:i + 3] for row in rows[::4] for i in range(0, len(row), size * 4)}
    white = sum(row.count(b"\xff\xff\xff") for row in rows[::8])
    assert (width, height) == (1280, 4000)
    assert len(colours) > 200
    assert white < 0.9 * (width * height // 8)


def test_dom_has_every_section_and_chart(page: Path) -> None:
    """Chromium's DOM holds every section heading and nine SVG charts."""
    dom = _chromium(page, "--dump-dom").stdout
    for heading in HEADINGS:
        assert re.search(rf"<h2[^>]*>{re.escape(heading)}</h2>", dom), heading
    assert dom.count("<svg ") == 9


def test_injected_markup_stays_text(page: Path) -> None:
    """The injection host name neither ran (title unchanged) nor became an element."""
    dom = _chromium(page, "--dump-dom").stdout
    assert "<title>Ward network risk report 2026-01-01</title>" in dom
    assert "PWNED</title>" not in dom and "<script" not in dom and "<img" not in dom
    assert "&lt;script&gt;document.title='PWNED'&lt;/script&gt;" in dom


def test_console_is_clean(page: Path) -> None:
    """Loading the page logs no console error, uncaught exception or blocked load (CSP)."""
    done = _chromium(page, "--dump-dom")
    assert done.returncode == 0
    bad = [line for line in done.stderr.splitlines()
           if "CONSOLE" in line or "Uncaught" in line or "Refused to" in line]
    assert bad == []
