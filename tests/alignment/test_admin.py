from datetime import date

import pytest
from django.urls import reverse

from alignment.models import Goal, KPIDriver
from finops.roles import ANALYSTS, FINANCE
from tests import factories
from tests.alignment.builders import Board


@pytest.fixture
def board(db) -> Board:
    return Board()


def goal_owned_by(board, user, code):
    return Goal.objects.create(
        code=code,
        title=f"Goal {code}",
        owner=user,
        period_start=date(2025, 1, 1),
        period_end=date(2025, 12, 1),
    )


def test_a_goal_owner_edits_their_goal_and_only_reads_others(client, board):
    owner = factories.user_in(FINANCE, "owner", is_staff=True)
    other = factories.user_in(FINANCE, "other", is_staff=True)
    mine, theirs = goal_owned_by(board, owner, "MINE"), goal_owned_by(board, other, "THEIRS")
    client.force_login(owner)

    page = client.get(reverse("admin:alignment_goal_change", args=[mine.pk]))
    assert page.status_code == 200 and b'name="_save"' in page.content
    response = client.post(
        reverse("admin:alignment_goal_change", args=[mine.pk]),
        {
            "code": "MINE",
            "title": "Cut days sales outstanding",
            "description": "",
            "period_start": "2025-01-01",
            "period_end": "2025-12-01",
            "weight": "1",
            "sort_order": "0",
            "owner": owner.pk,
            "links-TOTAL_FORMS": "0",
            "links-INITIAL_FORMS": "0",
            "links-MIN_NUM_FORMS": "0",
            "links-MAX_NUM_FORMS": "1000",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    mine.refresh_from_db()
    assert mine.title == "Cut days sales outstanding"

    theirs_page = client.get(reverse("admin:alignment_goal_change", args=[theirs.pk]))
    assert theirs_page.status_code == 200 and b'name="_save"' not in theirs_page.content  # read only
    refused = client.post(reverse("admin:alignment_goal_change", args=[theirs.pk]), {"title": "Hijacked"})
    assert refused.status_code == 403
    assert client.get(reverse("admin:alignment_goal_add")).status_code == 403  # new goals: analysts


def test_driver_links_are_the_analysts_to_change(client, board):
    member = factories.user_in(FINANCE, "member", is_staff=True)
    analyst = factories.user_in(ANALYSTS, "ana", is_staff=True)
    link = KPIDriver.objects.create(driver=board.kpi("otd"), outcome=board.kpi("dso"))
    url = reverse("admin:alignment_kpidriver_change", args=[link.pk])
    client.force_login(member)
    assert b'name="_save"' not in client.get(url).content
    client.force_login(analyst)
    assert b'name="_save"' in client.get(url).content


def test_a_goal_cannot_cascade_from_a_goal_under_it_or_end_before_it_starts(board):
    from django.core.exceptions import ValidationError

    top = board.goal("TOP")
    child = board.goal("CHILD", parent=top)
    top.parent = child
    with pytest.raises(ValidationError) as loop:
        top.full_clean()
    assert "cannot cascade from itself or from a goal under it" in str(loop.value)

    child.period_end = date(2024, 1, 1)
    with pytest.raises(ValidationError) as backwards:
        child.full_clean()
    assert "must end on or after the month it starts" in str(backwards.value)


def test_the_admin_refuses_a_driver_linked_to_itself(client, board):
    analyst = factories.user_in(ANALYSTS, "ana2", is_staff=True)
    kpi = board.kpi("otd")
    client.force_login(analyst)
    response = client.post(
        reverse("admin:alignment_kpidriver_add"), {"driver": kpi.pk, "outcome": kpi.pk, "explanation": ""}
    )
    assert response.status_code == 200
    assert "cannot drive itself" in response.content.decode()
    assert not KPIDriver.objects.exists()
