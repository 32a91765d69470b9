"""Every figure README.md and benchmarks/RESULTS.md quote from a results file matches it.

A quoted figure carries a marker naming the file and the key it comes from:

- ``12.3 images/s <!-- from results/pipeline.json: path_images_per_s -->``: the last
  number before the marker on its line; ``... : share_of_peak * 100`` scales the value.
- ``<!-- table from results/upload.json: - | levels[{i}].uploads_per_s | ... -->`` on the
  line above a markdown table: one spec per column (``-``: not a figure; ``a & b``: a
  cell quoting two figures, in order); ``{...}`` is evaluated per data row with ``i``
  (0-based row) and ``label`` (the first cell, emphasis and any " (...)" dropped, lower
  case); ``table from results/x.json [0, 2]:`` lists the file's rows the table's rows
  stand for (``i`` is then that list's entry).

The quoted figure matches when the file's value, rounded to the quoted decimals, is it
(commas, ``%`` and emphasis ignored; ``-`` stands for null). Every results file the two
documents name exists and records its command line, commit and machine.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md"]
RESULTS = ROOT / "benchmarks" / "results"
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
INLINE = re.compile(r"<!--\s*from results/(?P<file>[\w.-]+):\s*(?P<spec>.+?)\s*-->")
TABLE = re.compile(r"<!--\s*table from results/(?P<file>[\w.-]+)\s*(?P<rows>\[[\d,\s]*\])?:"
                   r"\s*(?P<specs>.+?)\s*-->")
PATH_PART = re.compile(r'\.?([A-Za-z_][\w-]*)|\[(\d+)\]|\["([^"]*)"\]')
PROVENANCE = ("command", "commit", "machine")


def lookup(data: Any, path: str) -> Any:
    """``a.b[2]["c d"]`` in nested dicts and lists."""
    position = 0
    while position < len(path):
        match = PATH_PART.match(path, position)
        assert match, f"bad path {path!r} at {position}"
        name, index, key = match.groups()
        data = data[int(index)] if index is not None else data[key if key is not None else name]
        position = match.end()
    return data


def fill(spec: str, i: int = 0, label: str = "") -> str:
    """``{...}`` in a spec evaluated with the row index ``i`` and its ``label``."""
    return re.sub(r"\{([^}]*)\}", lambda m: str(eval(m.group(1), {"__builtins__": {}},  # noqa: S307
                                                     {"i": i, "label": label})), spec)


def evaluate(spec: str, data: Any) -> tuple[float | None, str]:
    """(value, key path) of a filled-in spec ``path [* factor]``."""
    path, _, factor = spec.partition(" * ")
    value = lookup(data, path.strip())
    if value is None:
        return None, path
    return float(value) * (float(factor) if factor else 1.0), path


def matches(quoted: str, value: float | None, position: int = -1) -> bool:
    """``value`` rounded to the decimals quoted is the ``position``-th number of ``quoted``."""
    text = quoted.replace("*", "").strip()
    if value is None:
        return text in ("-", "")
    found = NUMBER.findall(text)
    if len(found) < (position + 1 if position >= 0 else -position):
        return False
    figure = found[position].replace(",", "")
    decimals = len(figure.split(".")[1]) if "." in figure else 0
    return abs(value - float(figure)) <= 0.5 * 10 ** -decimals + 1e-9


def load(name: str) -> Any:
    path = RESULTS / name
    assert path.exists(), f"results/{name} is quoted but does not exist"
    return json.loads(path.read_text())


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def row_label(cell: str) -> str:
    return cell.replace("*", "").split(" (")[0].strip().lower()


def check(text: str, where: str) -> tuple[int, list[str]]:
    """(figures checked, mismatches) over one document's markers."""
    checked, wrong = 0, []
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        table = TABLE.search(line)
        if table:
            data = load(table["file"])
            specs = [s.strip() for s in table["specs"].split(" | ")]
            rows = ast.literal_eval(table["rows"]) if table["rows"] else None
            body = [ln for ln in _table_after(lines, number)]
            assert body, f"{where}:{number}: no table under the marker"
            if rows is not None:
                assert len(rows) == len(body), f"{where}:{number}: {len(body)} rows, " \
                                               f"{len(rows)} listed"
            for r, row in enumerate(body):
                row_cells = cells(row)
                assert len(row_cells) >= len(specs), f"{where}:{number}: {row}"
                for spec, cell in zip(specs, row_cells, strict=False):
                    filled = fill(spec, rows[r] if rows else r, row_label(row_cells[0]))
                    if filled == "-":
                        continue
                    # "a & b": a cell quoting several figures ("88.7 / 120.0"), in order
                    parts = filled.split(" & ")
                    for position, part in enumerate(parts):
                        value, path = evaluate(part, data)
                        checked += 1
                        if not matches(cell, value, position if len(parts) > 1 else -1):
                            wrong.append(f"{where}:{number + 3 + r}: {cell!r} but "
                                         f"results/{table['file']} {path} = {value}")
            continue
        for marker in INLINE.finditer(line):
            before = INLINE.sub("", line[:marker.start()])
            data = load(marker["file"])
            value, path = evaluate(fill(marker["spec"]), data)
            checked += 1
            if not matches(before[-40:], value):
                wrong.append(f"{where}:{number}: {before[-40:].strip()!r} but "
                             f"results/{marker['file']} {path} = {value}")
    return checked, wrong


def _table_after(lines: list[str], number: int) -> list[str]:
    """The data rows of the markdown table that starts right under line ``number``."""
    rows = []
    for line in lines[number:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    assert len(rows) >= 2 and set(rows[1].replace("|", "").strip()) <= set("-: "), rows[:2]
    return rows[2:]


def test_every_marked_figure_matches_its_results_file() -> None:
    total, problems = 0, []
    for doc in DOCS:
        checked, wrong = check(doc.read_text(), doc.relative_to(ROOT).as_posix())
        total += checked
        problems += wrong
    assert not problems, "\n".join(problems)
    assert total >= 150, f"only {total} figures carry a marker"


def test_every_named_results_file_exists_and_records_how_it_was_made() -> None:
    named = set()
    for doc in DOCS:
        named |= set(re.findall(r"results/([\w-]+\.json)\b", doc.read_text()))
    assert named
    for name in sorted(named):
        data = load(name)
        for key in PROVENANCE:
            assert str(data.get(key) or "").strip(), f"results/{name} has no {key!r}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_a_changed_figure_is_caught(doc: Path) -> None:
    """The checker is not vacuous: nudging the last digit of any marked figure fails it."""
    text = doc.read_text()
    lines = text.splitlines()
    targets = [n for n, ln in enumerate(lines) if INLINE.search(ln)]
    assert targets, f"{doc.name} has no inline markers"
    for n in targets[:5]:
        line = lines[n]
        before = line[:INLINE.search(line).start()]  # type: ignore[union-attr]
        last = list(NUMBER.finditer(before))[-1]
        digit = last.group()[-1]
        changed = before[:last.end() - 1] + str((int(digit) + 3) % 10) + line[last.end():]
        _, wrong = check("\n".join(lines[:n] + [changed] + lines[n + 1:]), doc.name)
        assert wrong, f"changing {last.group()!r} on line {n + 1} went unnoticed"
