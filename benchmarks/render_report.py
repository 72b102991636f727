"""Screenshot a results page (tbps report) with headless chromium, e.g. for the README.

    .venv/bin/python benchmarks/render_report.py report.html --out benchmarks/results/report_example.png
      [--width 1280] [--height 2000]

Needs a chromium binary on PATH (Debian: apt-get install chromium).
"""
from __future__ import annotations

import argparse
import sys

from serving.report import render_png


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", help="the HTML file to render")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2000)
    a = parser.parse_args(argv)
    try:
        png = render_png(a.page, a.out, a.width, a.height)
    except (OSError, RuntimeError) as e:
        sys.exit(f"render_report: error: {e}")
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
