from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from core import keys
from core.authentication import authenticate_key
from core.models import User

pytestmark = pytest.mark.django_db


def test_createuser_and_issuekey():
    call_command(
        "createuser", "Ops@Example.com", "--password", "long-enough-pw", "--tier", "premium", stdout=StringIO()
    )
    user = User.objects.get(email="ops@example.com")
    assert user.tier == "premium" and user.check_password("long-enough-pw")

    out = StringIO()
    call_command("issuekey", "ops@example.com", "--scopes", "chat", stdout=out, stderr=StringIO())
    plaintext = out.getvalue().strip()
    assert keys.prefix_of(plaintext)
    assert authenticate_key(plaintext)[0] == user


def test_createuser_refuses_duplicates_and_short_passwords():
    call_command("createuser", "a@example.com", "--password", "long-enough-pw", stdout=StringIO())
    with pytest.raises(CommandError, match="already exists"):
        call_command("createuser", "A@example.com", "--password", "long-enough-pw", stdout=StringIO())
    with pytest.raises(CommandError, match="at least 8"):
        call_command("createuser", "b@example.com", "--password", "short", stdout=StringIO())


def test_issuekey_rejects_unknown_scopes():
    call_command("createuser", "c@example.com", "--password", "long-enough-pw", stdout=StringIO())
    with pytest.raises(CommandError, match="Unknown scopes: root"):
        call_command("issuekey", "c@example.com", "--scopes", "chat,root", stdout=StringIO())


def test_bootstrap_is_idempotent_and_prints_the_key_once(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    first, second = StringIO(), StringIO()
    call_command("bootstrap", stdout=first)
    call_command("bootstrap", stdout=second)
    assert "afk_" in first.getvalue() and "afk_" not in second.getvalue()
    assert User.objects.filter(is_staff=True, email="staff@agentsflow.local").exists()
    assert "afk_" not in (tmp_path / "demo-credentials.txt").read_text()


def test_migrations_are_complete():
    call_command("makemigrations", "--check", "--dry-run", stdout=StringIO())
