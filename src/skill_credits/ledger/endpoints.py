from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody, QueryParameter

from skill_credits import errors
from skill_credits.auth import confirm, principal_of
from skill_credits.db import Database
from skill_credits.ledger import service
from skill_credits.ledger.idempotency import request_hash
from skill_credits.ledger.schemas import (
    GRANT_STATUSES,
    TRANSACTION_TYPES,
    CaptureIn,
    ChargeIn,
    CreditIn,
    GrantPage,
    Hold,
    HoldIn,
    RefundIn,
    Transaction,
    TransactionPage,
    User,
)
from skill_credits.observability import CHARGE_SKILL, CHARGES, CREDITS_CONSUMED
from skill_credits.openapi import (
    BODY,
    IDEMPOTENCY_KEY_SCHEMA,
    REPLAYED,
    PathUserId,
    PathUuid,
    documented,
    optional_string,
)
from skill_credits.pagination import decode_cursor, decode_id_cursor
from skill_credits.skills.cache import SkillCache
from skill_credits.validation import (
    IDEMPOTENCY_KEY_RE,
    USER_ID_RE,
    USER_ID_RULE,
    anchored,
    idempotency_key,
    path_user_id,
    path_uuid,
)

IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        description="1-255 printable ASCII characters (0x21-0x7E, no space); a repeat of the"
        " same request replays the first answer, the same key with another request is 422",
        schema_extra=IDEMPOTENCY_KEY_SCHEMA,
    ),
]
Db = NamedDependency[Database]


def created(written: service.Written) -> Response[Transaction]:
    headers = {"Idempotent-Replayed": "true"} if written.replayed else {}
    return Response(written.transaction, status_code=201, headers=headers)


class LedgerController(Controller):
    path = "/v1"
    tags = ["ledger"]

    @post(
        "/charges",
        summary="Charge a skill at its current cost",
        opt={"deferred_auth": True, "counts_charges": True},
        **documented("createCharge", *BODY, 402, 403, 404, 422, 429, headers=(REPLAYED,)),
    )
    async def charge(
        self,
        request: Request,
        data: JSONBody[ChargeIn],
        key: IdempotencyKey = None,
    ) -> Response[Transaction]:
        # The hot path reads the pool and cache from app state: two injected
        # dependencies would cost Litestar a task group with two tasks per request.
        state = request.app.state
        db: Database = state.db
        cache: SkillCache = state.cache
        if key is not None and not IDEMPOTENCY_KEY_RE.fullmatch(key):
            await confirm(request)
            idempotency_key(key)
        digest = request_hash("POST", "/v1/charges", data, key)
        try:
            written = await service.charge(
                db,
                cache,
                data,
                key,
                digest,
                api_key_id=principal_of(request).key_id,
                limited=state.limited_users,
                batches=state.batches,
            )
        except Exception as exc:
            request.scope[CHARGE_SKILL] = data.skill  # observability.count_refused_charge
            if isinstance(exc, service.KeyNotLive):
                await confirm(request)  # 401, and the worker forgets the revoked key
            raise
        CHARGES.labels(data.skill, "replayed" if written.replayed else "charged").inc()
        if not written.replayed:
            CREDITS_CONSUMED.labels(data.skill).inc(-written.transaction.amount)
        return created(written)

    @post(
        "/users/{user_id:str}/credits",
        summary="Add (or, as admin, adjust) credits",
        **documented("addCredits", *BODY, 402, 403, 404, 422, headers=(REPLAYED,)),
    )
    async def add_credits(
        self,
        request: Request,
        user_id: PathUserId,
        data: JSONBody[CreditIn],
        db: Db,
        key: IdempotencyKey = None,
    ) -> Response[Transaction]:
        path_user_id(user_id)
        idempotency_key(key)
        if data.type == "ADJUSTMENT" and not principal_of(request).is_admin:
            raise errors.forbidden("ADJUSTMENT needs an admin key")
        digest = request_hash("POST", f"/v1/users/{user_id}/credits", data, key)
        return created(await service.add_credits(db, user_id, data, key, digest))

    @get("/users/{user_id:str}", summary="A user's balance", **documented("getUser", 400, 404))
    async def get_user(self, user_id: PathUserId, db: Db) -> User:
        path_user_id(user_id)
        return await service.get_user(db, user_id)

    @get(
        "/users/{user_id:str}/transactions",
        summary="A user's log, newest first",
        **documented("listTransactions", 400, 404),
    )
    async def list_transactions(
        self,
        user_id: PathUserId,
        db: Db,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        cursor: Annotated[
            str | None, QueryParameter(max_length=64, schema_extra=optional_string())
        ] = None,
        tx_type: Annotated[
            str | None,
            QueryParameter(name="type", schema_extra=optional_string(enum=TRANSACTION_TYPES)),
        ] = None,
        member: Annotated[
            str | None,
            QueryParameter(
                max_length=128, schema_extra=optional_string(pattern=anchored(USER_ID_RE))
            ),
        ] = None,
    ) -> TransactionPage:
        path_user_id(user_id)
        if member is not None and not USER_ID_RE.fullmatch(member):
            raise errors.validation_error("member", f"must be {USER_ID_RULE}")
        before = None
        if cursor is not None and (before := decode_cursor(cursor)) is None:
            raise errors.validation_error("cursor", "is not a cursor this API returned")
        if tx_type is not None and tx_type not in TRANSACTION_TYPES:
            raise errors.validation_error("type", f"must be one of {', '.join(TRANSACTION_TYPES)}")
        items, next_cursor = await service.transactions(db, user_id, limit, before, tx_type, member)
        return TransactionPage(items, next_cursor)

    @get(
        "/users/{user_id:str}/grants",
        summary="A user's grants in spending order",
        **documented("listGrants", 400, 404),
    )
    async def list_grants(
        self,
        user_id: PathUserId,
        db: Db,
        status: Annotated[
            str | None, QueryParameter(schema_extra=optional_string(enum=GRANT_STATUSES))
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        cursor: Annotated[
            str | None, QueryParameter(max_length=64, schema_extra=optional_string())
        ] = None,
    ) -> GrantPage:
        path_user_id(user_id)
        after = None
        if cursor is not None and (after := decode_id_cursor(cursor)) is None:
            raise errors.validation_error("cursor", "is not a cursor this API returned")
        if status is not None and status not in GRANT_STATUSES:
            raise errors.validation_error("status", f"must be one of {', '.join(GRANT_STATUSES)}")
        items, next_cursor = await service.grants(db, user_id, status or "active", limit, after)
        return GrantPage(items, next_cursor)

    @get(
        "/transactions/{tx_id:str}",
        summary="One transaction",
        **documented("getTransaction", 400, 404),
    )
    async def get_transaction(self, tx_id: PathUuid, db: Db) -> Transaction:
        tx_uuid = str(path_uuid(tx_id))
        return await service.get_transaction(db, tx_uuid)

    @post(
        "/transactions/{tx_id:str}/refund",
        summary="Refund a CONSUMPTION in full, once",
        **documented("refundTransaction", *BODY, 404, 409, 422, headers=(REPLAYED,)),
    )
    async def refund(
        self,
        tx_id: PathUuid,
        db: Db,
        data: JSONBody[RefundIn | None] = None,
        key: IdempotencyKey = None,
    ) -> Response[Transaction]:
        tx_uuid = str(path_uuid(tx_id))
        idempotency_key(key)
        body = data or RefundIn()
        digest = request_hash("POST", f"/v1/transactions/{tx_uuid}/refund", body, key)
        return created(await service.refund(db, tx_uuid, body, key, digest))


class HoldController(Controller):
    path = "/v1/holds"
    tags = ["holds"]

    @post(
        "/",
        summary="Reserve cost x units at the current price",
        **documented("createHold", *BODY, 402, 403, 404, 422, 429, headers=(REPLAYED,)),
    )
    async def create(
        self,
        request: Request,
        data: JSONBody[HoldIn],
        db: Db,
        cache: NamedDependency[SkillCache],
        key: IdempotencyKey = None,
    ) -> Response[Hold]:
        idempotency_key(key)
        digest = request_hash("POST", "/v1/holds", data, key)
        written = await service.create_hold(db, cache, data, key, digest, request.app.state.batches)
        headers = {"Idempotent-Replayed": "true"} if written.replayed else {}
        return Response(written.hold, status_code=201, headers=headers)

    @get("/{hold_id:str}", summary="One hold", **documented("getHold", 400, 404))
    async def get_hold(self, hold_id: PathUuid, db: Db) -> Hold:
        hold_uuid = str(path_uuid(hold_id))
        return await service.get_hold(db, hold_uuid)

    @post(
        "/{hold_id:str}/capture",
        summary="Charge at the hold's price; free the rest",
        **documented("captureHold", *BODY, 404, 409, 422, headers=(REPLAYED,)),
    )
    async def capture(
        self,
        request: Request,
        hold_id: PathUuid,
        db: Db,
        data: JSONBody[CaptureIn | None] = None,
        key: IdempotencyKey = None,
    ) -> Response[Transaction]:
        hold_uuid = str(path_uuid(hold_id))
        idempotency_key(key)
        body = data or CaptureIn()
        digest = request_hash("POST", f"/v1/holds/{hold_uuid}/capture", body, key)
        batches = request.app.state.batches
        return created(await service.capture(db, hold_uuid, body, key, digest, batches))

    @post(
        "/{hold_id:str}/release",
        status_code=200,
        summary="Free everything the hold reserved",
        **documented("releaseHold", 400, 404, 409),
    )
    async def release(self, hold_id: PathUuid, db: Db) -> Hold:
        hold_uuid = str(path_uuid(hold_id))
        return await service.release(db, hold_uuid)
