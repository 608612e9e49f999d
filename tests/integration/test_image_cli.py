"""Image variants through ``task_queue_optimized.py run``: TQ_MAX_IMAGE_PIXELS reaches the processor, formats coexist.

Runs the command line as a subprocess in a temporary directory with every
``TQ_*`` variable removed, as ``test_cli.py`` does.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from PIL import Image
except ImportError:
    Image = None

pytestmark = pytest.mark.skipif(Image is None, reason="Pillow is not installed: image variants cannot be made")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "task_queue_optimized.py"
TIMEOUT_S = 120  # hang guard only


def run(tmp_path: Path, tasks: list[dict], env: dict[str, str]) -> subprocess.CompletedProcess:
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TQ_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), clean.get("PYTHONPATH")]))
    clean.update(env)
    return subprocess.run([sys.executable, str(SCRIPT), "run", "--tasks", "tasks.json", "--db", "tasks.db",
                           "--store", "store", "--workers", "2"], cwd=tmp_path, env=clean,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def put_image(tmp_path: Path, key: str, size: tuple[int, int]) -> None:
    path = tmp_path / "store" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 100, 50)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def test_tq_max_image_pixels_dead_letters_a_larger_image_naming_its_size(tmp_path):
    put_image(tmp_path, "img/fits.png", (40, 25))    # 1000 pixels: at the limit
    put_image(tmp_path, "img/over.png", (40, 26))    # 1040 pixels
    tasks = [{"id": "a", "image_key": "img/fits.png", "variant": "thumb_16"},
             {"id": "b", "image_key": "img/over.png", "variant": "thumb_16"}]
    result = run(tmp_path, tasks, {"TQ_MAX_IMAGE_PIXELS": "1000"})
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "tasks.db") as conn:
        letters = conn.execute("SELECT idempotency_key, attempts, error_class, last_error FROM dead_letters").fetchall()
        done = conn.execute("SELECT idempotency_key FROM tasks WHERE status = 'success'").fetchall()
    assert done == [("img/fits.png:thumb_16",)]
    assert len(letters) == 1
    key, attempts, kind, message = letters[0]
    assert (key, attempts, kind) == ("img/over.png:thumb_16", 1, "ImageTooLarge")
    assert "40x26 (1040 pixels), over the limit of 1000 pixels" in message


def test_an_invalid_tq_max_image_pixels_stops_before_any_work(tmp_path):
    put_image(tmp_path, "img/a.png", (8, 8))
    result = run(tmp_path, [{"id": "a", "image_key": "img/a.png", "variant": "gray"}],
                 {"TQ_MAX_IMAGE_PIXELS": "0"})
    assert result.returncode == 2
    assert "TQ_MAX_IMAGE_PIXELS (environment): must be greater than 0, got '0'" in result.stderr
    assert not (tmp_path / "tasks.db").exists()


def test_a_bad_background_in_the_task_file_is_refused_naming_field_and_value(tmp_path):
    put_image(tmp_path, "img/a.png", (8, 8))
    result = run(tmp_path, [{"id": "a", "image_key": "img/a.png", "variant": "thumb_8",
                             "params": {"background": "transparent"}}], {})
    assert result.returncode == 2
    assert "field 'params.background': 'transparent' is not a colour" in result.stderr
    assert not (tmp_path / "tasks.db").exists()


def test_three_formats_of_one_image_make_three_objects_and_a_rerun_makes_none(tmp_path):
    put_image(tmp_path, "img/a.png", (60, 40))
    tasks = [{"id": f"t-{fmt}", "image_key": "img/a.png", "variant": "thumb_30", "params": {"format": fmt}}
             for fmt in ("jpeg", "png", "webp")]
    first = run(tmp_path, tasks, {})
    assert first.returncode == 0, first.stderr
    outputs = sorted(p.name for p in (tmp_path / "store" / "variants" / "thumb_30" / "img").iterdir())
    assert outputs == ["a.png.jpg", "a.png.png", "a.png.webp"]
    again = run(tmp_path, tasks, {})
    assert again.returncode == 0 and "3 already done (deduplicated)" in again.stdout
