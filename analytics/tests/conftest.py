from __future__ import annotations

import pytest

from core.models import APIKey


@pytest.fixture
def people(make_user, make_key):
    """Three users, the first two with two API keys each."""
    users = [make_user(display_name=f"P{n}") for n in range(3)]
    keys: list[APIKey] = []
    for user in users[:2]:
        for n in range(2):
            key, _ = make_key(user, name=f"k{n}")
            keys.append(key)
    return users, keys
