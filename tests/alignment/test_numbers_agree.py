"""The same KPI, period, grain, scenario and entity reads the same on every page and in
`kpi_values`: one stored value, one formatter."""

import json
import re
from datetime import date
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse

from tests import factories
from tests.alignment.builders import Board

JAN = date(2025, 1, 1)


@pytest.fixture
def board(db) -> Board:
    board = Board()
    revenue = board.kpi("revenue", decimals=1)
    margin = board.kpi("gross_margin_pct", unit="percent")
    board.values(revenue, date(2024, 12, 1), ["1180000", "1234567.89"], target="1300000", status="red")
    board.values(margin, date(2024, 12, 1), ["0.41", "0.4237"], target="0.40", status="green")
    goal = board.goal("G1")
    board.link(goal, revenue)
    board.link(goal, margin)
    return board


def shown(html: str, name: str) -> str:
    """The first number shown after the KPI's name in a table row."""
    row = re.search(rf">{re.escape(name)}</a>.*?<td class=\"num\">([^<]+)</td>", html, re.S)
    assert row, f"{name} not found"
    return row.group(1).strip()


def test_a_value_reads_the_same_on_every_page_and_in_kpi_values(client, board):
    client.force_login(factories.leadership_user())
    scorecard = client.get(reverse("scorecard")).content.decode()
    overview = client.get(reverse("overview")).content.decode()
    detail = client.get(reverse("kpi-detail", args=["gross_margin_pct"])).content.decode()
    out = StringIO()
    call_command("kpi_values", "gross_margin_pct", "--format", "json", stdout=out)
    printed = {row["period"]: row["formatted"] for row in json.loads(out.getvalue())}

    assert shown(scorecard, "Gross Margin Pct") == "42.4%"
    assert shown(overview, "Gross Margin Pct") == "41.0%"  # last period, then now
    assert "42.4%" in overview
    assert '<dd class="big">42.4%' in detail
    assert printed["2025-01-01"] == "42.4%"
    assert shown(scorecard, "Revenue") == "1.23M"


def test_separators_follow_the_browsers_language(client, board):
    client.force_login(factories.leadership_user())
    english = client.get(reverse("scorecard"), headers={"accept-language": "en-US"}).content.decode()
    german = client.get(reverse("scorecard"), headers={"accept-language": "de"}).content.decode()
    assert shown(english, "Gross Margin Pct") == "42.4%"
    assert shown(german, "Gross Margin Pct") == "42,4%"
    assert shown(german, "Revenue") == "1,23M"
