"""Tables piped into a log (not a terminal) keep every row on one line: nothing squeezed or wrapped.

The CLI runs in process with its output captured, as in a CI log or behind ``| tee``; each row of
each table must then be found whole on a single output line.
"""

from __future__ import annotations

import json
from pathlib import Path

from specc.cli import render
from specc.diff import compare, load_side

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "specs" / "deeplabv3plus_mobilenetv2_demo.yaml"


def _row_on_one_line(cells: list[str], lines: list[str]) -> bool:
    """Some line holds every non-empty cell of the row, in order."""
    wanted = [c.strip() for c in cells if c.strip()]
    for line in lines:
        at = 0
        for cell in wanted:
            at = line.find(cell, at)
            if at < 0:
                break
            at += len(cell)
        else:
            return True
    return False


def test_diff_tables_keep_long_cells_on_one_line_when_piped(cli) -> None:
    args = [DEMO, DEMO, "--set-a", "input.size=[33,33]", "--set-b", "input.size=[33,33]",
            "--set-b", "decoder=null"]
    result = cli("diff", *args)
    assert result.code == 1, result.err
    lines = result.out.splitlines()
    side_a = load_side(DEMO, ["input.size=[33,33]"], "a")
    side_b = load_side(DEMO, ["input.size=[33,33]", "decoder=null"], "b")
    rows = [row for s in render.sections(compare(side_a, side_b)) for row in s.rows]
    decoder = [row for row in rows if row[0] == "decoder"]
    assert decoder and len(decoder[0][1]) > 160  # wider than any fixed pipe width
    for row in rows:
        assert _row_on_one_line(row, lines), f"row wrapped: {row}"


def test_eval_table_keeps_caption_and_rows_on_one_line_when_piped(capsys) -> None:
    data = "folder:/" + "/".join(["a-rather-long-folder-name"] * 6)
    classes = ["background", "a class whose name alone is longer than eighty columns of a "
                             "terminal window, as some data sets have"]
    report = {"miou": 0.5, "pixel_accuracy": 0.75, "classes": classes,
              "per_class_iou": [0.25, None], "data": data, "split": "val", "images": 3,
              "output_stride": 16, "checkpoint": "runs/x/checkpoint"}
    render.print_eval(report, "demo", (1.0,), False)
    lines = capsys.readouterr().out.splitlines()
    assert any(f"{data} val, 3 images, output stride 16, scales 1.0" in line for line in lines)
    assert _row_on_one_line([classes[1], "—"], lines)
    assert _row_on_one_line(["background", "25.00"], lines)


def test_info_tables_keep_rows_on_one_line_when_piped(cli) -> None:
    result = cli("info", DEMO, "--set", "input.size=[33,33]")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    data = json.loads(cli("info", DEMO, "--set", "input.size=[33,33]", "--json").out)
    for r in data["schedule"]:
        assert _row_on_one_line([r["stage"], r["unit"], r["type"],
                                 "×".join(map(str, r["feature_size"]))], lines), r
    for part, cost in data["costs"].items():
        assert _row_on_one_line([part, f"{cost['params']:,}", f"{cost['macs']:,}"], lines)
