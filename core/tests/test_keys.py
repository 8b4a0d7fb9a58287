from core import keys


def test_generated_key_has_marker_prefix_and_valid_checksum():
    new = keys.generate()
    assert new.plaintext.startswith("afk_")
    assert len(new.plaintext) == keys.KEY_LENGTH
    assert keys.prefix_of(new.plaintext) == new.prefix == new.plaintext[: keys.PREFIX_LENGTH]
    assert keys.matches(new.plaintext, new.secret_hash)
    assert new.plaintext not in new.secret_hash


def test_keys_are_unique():
    assert len({keys.generate().plaintext for _ in range(1000)}) == 1000


def test_malformed_keys_are_rejected_without_lookup():
    good = keys.generate().plaintext
    flipped = good[:-1] + ("A" if good[-1] != "A" else "B")
    wrong_secret = good[:20] + ("x" if good[20] != "x" else "y") + good[21:]
    for candidate in [
        "",
        good[:-1],  # truncated
        good + "0",  # too long
        flipped,  # bad checksum
        wrong_secret,  # checksum no longer matches the body
        "sk_" + good[3:],  # wrong marker
        good[:10] + "-" + good[11:],  # character outside the alphabet
        good.upper(),
    ]:
        assert keys.prefix_of(candidate) is None, candidate


def test_digest_is_sha256_hex():
    assert len(keys.digest("x")) == 64
