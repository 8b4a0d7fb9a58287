"""Who may see the staff dashboard and its live endpoints, and what they answer."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(make_user):
    return make_user(is_staff=True)


def test_anonymous_is_sent_to_sign_in(client):
    response = client.get("/dashboard/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/dashboard/")


def test_signed_in_non_staff_gets_403(client, make_user):
    client.force_login(make_user())
    response = client.get("/dashboard/")
    assert response.status_code == 403
    assert b"The dashboard is for staff" in response.content


def test_staff_sees_the_page_with_vendored_scripts(client, staff):
    client.force_login(staff)
    response = client.get("/dashboard/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/vendor/chartjs/chart.umd.min.js" in html
    assert "https://" not in html.split("<main>")[1]  # nothing from a CDN
    assert 'id="fig-rps"' in html


def test_admin_links_to_the_dashboard(client, staff):
    staff.is_superuser = True
    staff.save()
    client.force_login(staff)
    assert 'href="/dashboard/"' in client.get("/admin/").content.decode()


def test_live_figures_need_staff(client, make_user, make_key, staff):
    assert client.get("/api/dashboard/live").status_code == 401
    client.force_login(make_user())
    response = client.get("/api/dashboard/live")
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    client.force_login(staff)
    body = client.get("/api/dashboard/live").json()
    assert {row["metric"] for row in body["targets"]} >= {"Cache hit ratio", "Error rate (5xx)"}
    assert "latency_ms" in body["current"]


def test_live_figures_with_a_staff_key_need_the_admin_scope(client, make_key, staff):
    _, chat_only = make_key(staff, scopes=["chat"])
    assert client.get("/api/dashboard/live", HTTP_AUTHORIZATION=f"Bearer {chat_only}").status_code == 403
    _, admin = make_key(staff, scopes=["admin"])
    assert client.get("/api/dashboard/live", HTTP_AUTHORIZATION=f"Bearer {admin}").status_code == 200


def test_history_rejects_an_unknown_range(client, staff):
    client.force_login(staff)
    response = client.get("/api/dashboard/history?range=week")
    assert response.status_code == 400
    assert "range" in response.json()["details"]
    assert client.get("/api/dashboard/history?range=day").json()["points"] == []  # fresh install: empty
