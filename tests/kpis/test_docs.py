"""docs/kpi-library.md can't fall behind the library: every KPI with its formula, unit, direction
and target, a note with a public source, and every measure the formulas use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kpis.definitions import LIBRARY_DIR
from kpis.formula import parse

DOC = Path(__file__).resolve().parents[2] / "docs" / "kpi-library.md"
STANDARD = yaml.safe_load((LIBRARY_DIR / "standard.yaml").read_text())["kpis"]
KPI_CODES = {row["code"] for row in STANDARD}
TARGET_WORDS = {"budget": "budget", "manual": "manual", "last_year_plus": "last year"}


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def tables(doc: str) -> dict[str, dict[str, list[str]]]:
    """{first header cell: {code in the first cell: the row's cells}} for every table."""
    found: dict[str, dict[str, list[str]]] = {}
    header = None
    for line in doc.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells[0]
            found.setdefault(header, {})
        elif re.fullmatch(r"`[a-z_0-9]+`", cells[0]):
            found[header][cells[0].strip("`")] = cells
    return found


def notes(doc: str) -> dict[str, str]:
    """{code: its bullet note} for the notes that start with **`code`**."""
    by_code = {}
    for note in re.split(r"\n- ", doc):
        first_line = note.split("\n", 1)[0]
        for code in re.findall(r"\*\*`([a-z_0-9]+)`\*\*", first_line):
            by_code[code] = note
    return by_code


@pytest.mark.parametrize("kpi", STANDARD, ids=[row["code"] for row in STANDARD])
def test_every_library_kpi_is_listed_with_its_formula_unit_direction_and_target(doc, kpi):
    row = tables(doc)["code"].get(kpi["code"])
    assert row is not None, f"{kpi['code']} has no row in {DOC.name}"
    _, name, formula, unit, direction, target = row
    assert name == kpi["name"]
    assert formula == f"`{kpi['formula']}`"
    assert unit == kpi["unit"]
    assert direction.split()[0] == kpi.get("direction", "higher")
    if kpi.get("direction") == "band":
        low, high = kpi["band_low"], kpi["band_high"]
        shown = (f"{low:g} to {high:g}", f"{low * 100:g} % to {high * 100:g} %")
        assert direction.removeprefix("band ") in shown
        assert target.startswith("band")
    else:
        assert target.startswith(TARGET_WORDS[kpi.get("target_rule", "budget")])
    assert f"amber {kpi.get('amber_tolerance_pct', 5):g} %" in target


@pytest.mark.parametrize("code", sorted(KPI_CODES))
def test_every_library_kpi_has_a_note_with_a_public_source(doc, code):
    note = notes(doc).get(code)
    assert note is not None, f"no note starting with **`{code}`** in {DOC.name}"
    assert "*Source:*" in note


def test_the_reference_lists_no_kpi_the_library_lacks(doc):
    assert set(tables(doc)["code"]) == KPI_CODES


def test_every_measure_a_library_formula_uses_is_listed(doc):
    used = set().union(*(parse(row["formula"]).names for row in STANDARD)) - KPI_CODES
    listed = set(tables(doc)["measure"])
    assert used - listed == set()
    # The list is the set of standard measure codes: the demo maps exactly those.
    demo = {m["code"] for m in yaml.safe_load((LIBRARY_DIR / "demo.yaml").read_text())["measures"]}
    assert listed == demo


def test_every_conventions_question_of_the_brief_is_answered(doc):
    section = doc[doc.index("## Conventions where sources disagree") : doc.index("## Finance: profit")]
    for question in (
        "ending or average balance",
        "days in the period or 365",
        "cost of sales or cost of revenue",
        "order or line level",
        "CSAT",
        "NPS",
    ):
        assert f"| {question} |" in section, question
