"""Pure logic: validation rules, cursors, request hashes, settings, If-Match."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import msgspec
import pytest

from skill_credits.bodies import field_and_message
from skill_credits.errors import ApiError
from skill_credits.ledger.idempotency import request_hash
from skill_credits.ledger.limited import LimitedUsers
from skill_credits.ledger.repository import decode_cursor, encode_cursor
from skill_credits.ledger.schemas import ChargeIn, CreditIn, HoldIn
from skill_credits.pagination import decode_time_cursor, encode_time_cursor
from skill_credits.settings import Settings
from skill_credits.skills.schemas import SkillCreate, SkillPatch
from skill_credits.skills.service import parse_if_match
from skill_credits.validation import idempotency_key, path_user_id


@pytest.mark.parametrize("name", ["A", "GEO_WRITER_FULL", "X1_2", "A" * 64])
def test_valid_skill_names(name: str) -> None:
    assert SkillCreate(name=name, display_name="d", cost=0).name == name


@pytest.mark.parametrize(
    "name", ["", "a", "my tool", "MY TOOL", "1ABC", "_A", "A" * 65, "ABC\n", "ÄBC", "AB-C"]
)
def test_invalid_skill_names(name: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(
            msgspec.json.encode({"name": name, "display_name": "d", "cost": 1}), type=SkillCreate
        )


@pytest.mark.parametrize("user", ["a", "user.42", "auth0|x".replace("|", ":"), "a@b.c", "x" * 128])
def test_valid_user_ids(user: str) -> None:
    assert path_user_id(user) == user


@pytest.mark.parametrize("user", ["", "a b", "x" * 129, "a/b", "ü", "a\n"])
def test_invalid_user_ids(user: str) -> None:
    with pytest.raises(ApiError) as err:
        path_user_id(user)
    assert err.value.status_code == 400


def test_strict_types_and_post_init_messages_name_the_field() -> None:
    with pytest.raises(msgspec.ValidationError) as err:
        msgspec.json.decode(b'{"user_id":"u","skill":"S","units":"2"}', type=ChargeIn)
    assert field_and_message(err.value)[0] == "units"
    with pytest.raises(msgspec.ValidationError) as err:
        msgspec.json.decode(b'{"user_id":"u","skill":"my tool"}', type=ChargeIn)
    field, message = field_and_message(err.value)
    assert field == "skill" and "uppercase" in message
    with pytest.raises(msgspec.ValidationError) as err:
        msgspec.json.decode(b'{"user_id":"u","skill":"S","x":1}', type=ChargeIn)
    assert field_and_message(err.value)[0] == "x"
    with pytest.raises(msgspec.ValidationError) as err:
        msgspec.json.decode(b"{}", type=SkillPatch)
    assert field_and_message(err.value)[0] == "body"


def test_credit_rules() -> None:
    for body in [
        b'{"amount":0,"type":"GRANT"}',
        b'{"amount":-1,"type":"PURCHASE"}',
        b'{"amount":0,"type":"ADJUSTMENT"}',
        b'{"amount":9223372036854775808,"type":"GRANT"}',
    ]:
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(body, type=CreditIn)
    assert msgspec.json.decode(b'{"amount":-5,"type":"ADJUSTMENT"}', type=CreditIn).amount == -5


@pytest.mark.parametrize("seq", [1, 42, 2**62])
def test_cursor_round_trip(seq: int) -> None:
    assert decode_cursor(encode_cursor(seq)) == seq


@pytest.mark.parametrize("garbage", ["", "!!", "eDE", "s1", "' OR 1=1 --", "c" * 60])
def test_garbage_cursors_are_refused(garbage: str) -> None:
    assert decode_cursor(garbage) is None


@pytest.mark.parametrize(
    "at", [datetime(2026, 12, 7, 23, 1, 2, 345678, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC)]
)
def test_time_cursor_round_trip(at: datetime) -> None:
    assert decode_time_cursor(encode_time_cursor(at, 2**62)) == (at, 2**62)
    assert decode_time_cursor(encode_cursor(17)) is None  # a seq cursor is another kind


@pytest.mark.parametrize("raw", ["t1.", "t.1", "t1.99999999999999999999", "t9999999999999999999.1"])
def test_garbage_time_cursors_are_refused(raw: str) -> None:
    cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    assert decode_time_cursor(cursor) is None
    assert decode_time_cursor("!!") is None


def test_request_hash_tells_requests_apart() -> None:
    a = ChargeIn(user_id="u", skill="S")

    def h(path: str, body: ChargeIn, key: str | None = "k") -> bytes | None:
        return request_hash("POST", path, body, key)

    assert h("/v1/charges", a) == h("/v1/charges", a)
    assert h("/v1/charges", a) != h("/v1/charges", ChargeIn(user_id="u", skill="S", units=2))
    assert h("/v1/charges", a) != h("/v1/other", a)
    # an omitted default and the explicit default are the same request
    assert h("/p", ChargeIn(user_id="u", skill="S", units=1)) == h("/p", a)
    # the key is not part of it (a reused key is compared by its request), and without
    # a key there is nothing to compare: no hash
    assert h("/p", a, "k1") == h("/p", a, "k2")
    assert h("/p", a, None) is None
    # the member is part of it; without one, the hash is what it was before members, so
    # a retry across that upgrade still finds its original
    assert h("/p", ChargeIn(user_id="u", skill="S", member="m")) != h("/p", a)
    before = b'POST /p\n{"user_id":"u","skill":"S","description":null,"units":1}'
    assert h("/p", a) == hashlib.sha256(before).digest()
    hold = HoldIn(user_id="u", skill="S")
    held = b'POST /p\n{"user_id":"u","skill":"S","units":1,"ttl_seconds":900,"description":null}'
    assert request_hash("POST", "/p", hold, "k") == hashlib.sha256(held).digest()
    # the member is the last field of both, where the hash cuts it
    assert ChargeIn.__struct_fields__[-1] == HoldIn.__struct_fields__[-1] == "member"


@pytest.mark.parametrize(
    ("header", "value"),
    [(None, None), ('"3"', "3"), ("3", "3"), ('W/"3"', "3"), ("*", "*"), (' "7" ', "7")],
)
def test_if_match(header, value) -> None:
    assert parse_if_match(header) == value


@pytest.mark.parametrize("key", ["", "a b", "k" * 256, "é", "tab\t"])
def test_bad_idempotency_keys(key: str) -> None:
    with pytest.raises(ApiError):
        idempotency_key(key)


def test_settings_from_env_and_defaults() -> None:
    s = Settings.from_env({})
    assert s.database_url == "postgresql://localhost:5432/skill_credits"
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.sqlalchemy_url == "postgresql+asyncpg://localhost:5432/skill_credits"
    s = Settings.from_env({"DATABASE_URL": "postgres://u@h:1/d", "REDIS_URL": "redis://r:2/1"})
    assert s.sqlalchemy_url == "postgresql+asyncpg://u@h:1/d" and s.redis_url == "redis://r:2/1"
    with pytest.raises(ValueError):
        _ = Settings(database_url="nonsense").sqlalchemy_url


def test_a_server_shutting_down_or_starting_is_unavailable() -> None:
    import asyncpg
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection, dialect

    from skill_credits.db.failures import is_unavailable

    dbapi = dialect().import_dbapi()
    for error in (
        asyncpg.exceptions.CannotConnectNowError("starting up"),
        asyncpg.exceptions.AdminShutdownError("shutting down"),
        asyncpg.exceptions.ConnectionDoesNotExistError("gone"),
    ):
        assert is_unavailable(error)
        try:
            AsyncAdapt_asyncpg_connection._handle_exception_no_connection(dbapi, error)
        except Exception as adapted:  # noqa: BLE001 - what SQLAlchemy raises
            wrapped = sa_exc.DBAPIError.instance("SELECT 1", {}, adapted, dbapi.Error)
        assert is_unavailable(wrapped), error
    unique = asyncpg.exceptions.UniqueViolationError("dup")
    assert not is_unavailable(unique)


def test_the_limited_users_hint_learns_forgets_and_stays_bounded() -> None:
    hint = LimitedUsers(capacity=2)
    hint.learn("a", True)
    hint.learn("b", True)
    assert "a" in hint and "b" in hint
    hint.learn("a", False)
    assert "a" not in hint and "b" in hint
    hint.learn("c", True)
    hint.learn("d", True)  # full: it starts over
    assert ("b" in hint, "c" in hint, "d" in hint) == (False, False, True)


def test_charge_batch_slots_below_one_are_refused_at_start() -> None:
    assert Settings.from_env({"CHARGE_BATCH_SLOTS": "1"}).charge_batch_slots == 1
    with pytest.raises(ValueError, match="CHARGE_BATCH_SLOTS"):
        Settings.from_env({"CHARGE_BATCH_SLOTS": "0"})
