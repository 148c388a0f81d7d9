"""Refresh the README's Studio screenshots from the browser tests' artifacts.

    python3 -m pytest tests/studio -m browser -q && python3 scripts/update_screenshots.py

The browser tests save every page at 1280 px to test-artifacts/studio/; this copies the ones the
README shows into docs/screenshots/, cut to a readable height and reduced to 256 colours (flat UI
colours survive that; the files stay small in git).
"""

from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHOWN = {"job-1280.png": "studio-job.png", "playground-1280.png": "studio-playground.png"}
MAX_HEIGHT = 1600


def main() -> None:
    for source, target in SHOWN.items():
        image = Image.open(ROOT / "test-artifacts" / "studio" / source).convert("RGB")
        image = image.crop((0, 0, image.width, min(image.height, MAX_HEIGHT)))
        image.quantize(colors=256).save(ROOT / "docs" / "screenshots" / target, optimize=True)
        print(f"docs/screenshots/{target}: {image.width}x{image.height}")


if __name__ == "__main__":
    main()
