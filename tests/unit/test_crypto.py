"""SecretBox and ProgressTokens: authenticated encryption, key rotation, token verification."""

from __future__ import annotations

from uuid import uuid4

import pytest
from cryptography.fernet import Fernet
from itsdangerous import TimestampSigner

from shared.crypto import ProgressTokens, SecretBox, UndecryptableSecret, hash_api_key, new_api_key
from shared.settings import Settings

SECRET = "cs_0123456789abcdef0123456789abcdef01234567"


def test_round_trip_and_no_plaintext_in_the_ciphertext() -> None:
    box = SecretBox("key-a")
    token = box.encrypt(SECRET)
    assert SECRET.encode() not in token
    assert box.decrypt(token) == SECRET
    assert box.encrypt(SECRET) != token  # a fresh IV every time: equal secrets do not show


def test_the_cipher_is_authenticated() -> None:
    box = SecretBox("key-a")
    foreign = Fernet(Fernet.generate_key()).encrypt(b"x")  # a valid token under another key
    with pytest.raises(UndecryptableSecret):
        box.decrypt(foreign)
    tampered = bytearray(box.encrypt(SECRET))
    tampered[40] ^= 1
    with pytest.raises(UndecryptableSecret):
        box.decrypt(bytes(tampered))


def test_the_error_names_neither_the_secret_nor_a_key() -> None:
    with pytest.raises(UndecryptableSecret) as caught:
        SecretBox("key-b").decrypt(SecretBox("key-a").encrypt(SECRET))
    text = str(caught.value) + repr(caught.value)
    assert SECRET not in text and "key-a" not in text and "key-b" not in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_previous_keys_decrypt_but_never_encrypt() -> None:
    old_token = SecretBox("key-old").encrypt(SECRET)
    box = SecretBox("key-new", previous=["key-older", "key-old"])
    assert box.decrypt(old_token) == SECRET
    assert not box.is_current(old_token)
    fresh = box.encrypt(SECRET)
    assert box.is_current(fresh)
    assert SecretBox("key-new").decrypt(fresh) == SECRET
    with pytest.raises(UndecryptableSecret):
        SecretBox("key-old").decrypt(fresh)


def test_rotate_re_encrypts_under_the_current_key() -> None:
    old_token = SecretBox("key-old").encrypt(SECRET)
    rotated = SecretBox("key-new", previous=["key-old"]).rotate(old_token)
    assert SecretBox("key-new").decrypt(rotated) == SECRET  # no previous key needed any more
    with pytest.raises(UndecryptableSecret):
        SecretBox("key-new", previous=["key-other"]).rotate(old_token)


def test_keys_come_from_settings() -> None:
    settings = Settings(
        secret_key="key-new",  # type: ignore[arg-type]
        secret_key_previous=["key-old"],  # type: ignore[list-item]
    )
    old_token = SecretBox("key-old").encrypt(SECRET)
    assert SecretBox.from_settings(settings).decrypt(old_token) == SECRET
    assert "key-old" not in repr(settings)


def test_settings_parse_previous_keys_from_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WOOSYNC_SECRET_KEY_PREVIOUS", '["key-b", "key-a"]')
    keys = [key.get_secret_value() for key in Settings().secret_key_previous]
    assert keys == ["key-b", "key-a"]


def test_store_and_token_keys_are_distinct() -> None:
    # Derived for different purposes: a token signature is no use against the cipher.
    from shared.crypto import _derive

    assert _derive("k", b"store-secrets") != _derive("k", b"progress-tokens")


def test_progress_token_binds_job_and_org() -> None:
    tokens = ProgressTokens("key-a", 600)
    job_id, org_id = uuid4(), uuid4()
    token = tokens.issue(job_id, org_id)
    assert tokens.verify(token, job_id) == org_id
    assert tokens.verify(token, uuid4()) is None
    assert tokens.verify(token[:-2] + "xx", job_id) is None
    assert ProgressTokens("key-b", 600).verify(token, job_id) is None


def test_progress_token_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = ProgressTokens("key-a", 60)
    job_id, org_id = uuid4(), uuid4()
    real = TimestampSigner.get_timestamp
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: real(self) - 61)
    token = tokens.issue(job_id, org_id)
    monkeypatch.setattr(TimestampSigner, "get_timestamp", real)
    assert tokens.verify(token, job_id) is None


def test_progress_tokens_verify_under_previous_keys_and_sign_with_the_current() -> None:
    job_id, org_id = uuid4(), uuid4()
    old_token = ProgressTokens("key-old", 600).issue(job_id, org_id)
    rotated = ProgressTokens("key-new", 600, previous=["key-old"])
    assert rotated.verify(old_token, job_id) == org_id
    new_token = rotated.issue(job_id, org_id)
    assert ProgressTokens("key-new", 600).verify(new_token, job_id) == org_id
    assert ProgressTokens("key-old", 600).verify(new_token, job_id) is None
    settings = Settings(
        secret_key="key-new",  # type: ignore[arg-type]
        secret_key_previous=["key-old"],  # type: ignore[list-item]
    )
    assert ProgressTokens.from_settings(settings).verify(old_token, job_id) == org_id


def test_api_keys_are_random_and_hashed() -> None:
    first, second = new_api_key(), new_api_key()
    assert first.startswith("wsk_") and first != second
    assert hash_api_key(first) != hash_api_key(second)
    assert first.encode() not in hash_api_key(first)


def test_scram_verifier_authenticates_rfc_7677s_exchange() -> None:
    """The server side of RFC 7677's example exchange, run on our verifier: the client's proof
    checks out against StoredKey, and ServerKey signs exactly the RFC's server signature."""
    import base64
    import hashlib
    import hmac

    from shared.crypto import scram_sha256_verifier

    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = scram_sha256_verifier("pencil", salt=salt, iterations=4096)
    method, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    stored_key, server_key = (base64.b64decode(k) for k in keys.split(":"))
    assert (method, iterations_salt) == ("SCRAM-SHA-256", "4096:W22ZaJ0SNY7soEsUEjb6gQ==")

    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth_message = (
        f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
        f"c=biws,r={nonce}"
    ).encode()
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_signature = hmac.digest(stored_key, auth_message, "sha256")
    client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key
    server_signature = hmac.digest(server_key, auth_message, "sha256")
    assert base64.b64encode(server_signature).decode() == (
        "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    )
    assert scram_sha256_verifier("pencil") != verifier  # a fresh random salt each time


def test_scram_verifier_refuses_what_postgres_would_normalise() -> None:
    import pytest

    from shared.crypto import scram_sha256_verifier

    with pytest.raises(ValueError, match="ASCII"):
        scram_sha256_verifier("pässword")
