"""The users page: a user's balance, grants, limits, auto-recharge rule and requests, and
log (a page at a time), and what its forms and links do: grant credits, add, change or
remove a limit, set, change or remove the auto-recharge rule, refund a charge (with its
confirmation page)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, Template

from skill_credits.admin_ui import charts, forms, present
from skill_credits.admin_ui.forms import sentence
from skill_credits.admin_ui.pages.confirmation import confirm
from skill_credits.admin_ui.pages.shared import Db, Form, flash, pop_flash, see_other, uuid_or_none
from skill_credits.admin_ui.session import admin_session
from skill_credits.db import Database
from skill_credits.errors import ApiError, transaction_not_found
from skill_credits.ledger import idempotency
from skill_credits.ledger import service as ledger_service
from skill_credits.ledger.schemas import RefundIn
from skill_credits.limits import service as limits_service
from skill_credits.pagination import decode_cursor, encode_cursor
from skill_credits.recharges import service as recharges_service
from skill_credits.usage import service as usage_service
from skill_credits.validation import USER_ID_RE, USER_ID_RULE


class UserPagesController(Controller):
    path = "/admin"
    guards = [admin_session]
    include_in_schema = False

    async def _users_page(
        self,
        request: Request,
        db: Database,
        user_id: str | None,
        cursor: str | None = None,
        member: str | None = None,
        *,
        form: dict | None = None,
        errors: dict | None = None,
        limit_form: dict | None = None,
        limit_errors: dict | None = None,
        recharge_form: dict | None = None,
        recharge_errors: dict | None = None,
        status: int = 200,
    ) -> Template:
        context: dict[str, Any] = {
            "query": user_id or "",
            "member": member or "",
            "user": None,
            "items": [],
            "next_cursor": None,
            "error": None,
            "flash": pop_flash(request),
            "idem": uuid.uuid4().hex,
            "form": form or {},
            "errors": errors or {},
            "limit_form": limit_form or {},
            "limit_errors": limit_errors or {},
            "recharge_form": recharge_form,
            "recharge_errors": recharge_errors or {},
        }
        if user_id:
            before = decode_cursor(cursor) if cursor else None
            if not USER_ID_RE.fullmatch(user_id):
                context["error"] = f"A user id is {USER_ID_RULE}."
                status = 400
            elif cursor and before is None:
                context["error"] = "That page link is not valid."
                status = 400
            elif member and not USER_ID_RE.fullmatch(member):
                context["error"] = f"A member is {USER_ID_RULE}."
                status = 400
            else:
                try:
                    log = await ledger_service.user_log(db, user_id, 25, before, member or None)
                except ApiError as exc:
                    if exc.code != "user_not_found":
                        raise
                    context["error"] = f"No user {user_id} (granting credits creates one)."
                    context["new_user"] = user_id
                else:
                    last_30 = await usage_service.usage(
                        db, usage_service.Query(start=None, end=None, user_id=user_id)
                    )
                    context.update(
                        recent=charts.over_time("Last 30 days, by skill", last_30),
                        forecast=await usage_service.forecast(db, user_id),
                        user=log.user,
                        items=log.items,
                        next_cursor=log.next_cursor,
                        refunded=log.refunded,
                        charges=_charge_links(user_id, log.items, log.charges),
                        grants=log.grants,
                        limits=log.limits,
                        recharge_rule=await recharges_service.rule_or_none(db, user_id),
                        recharges=(await recharges_service.of_user(db, user_id, None, None, 10))[0],
                    )
        return Template("users.html", context=context, status_code=status)

    @get("/users")
    async def users(
        self,
        request: Request,
        db: Db,
        user_id: Annotated[str | None, QueryParameter(max_length=200)] = None,
        cursor: Annotated[str | None, QueryParameter(max_length=64)] = None,
        member: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> Template:
        return await self._users_page(request, db, user_id, cursor, member)

    @post("/users/{user_id:str}/limits")
    async def add_limit(
        self, request: Request, user_id: FromPath[str], data: Form, db: Db
    ) -> Response:
        if (refused := _not_a_user(request, user_id)) is not None:
            return refused
        body, errors = forms.limit(data)
        if body is None:
            return await self._users_page(
                request, db, user_id, limit_form=data, limit_errors=errors, status=400
            )
        try:
            made = await limits_service.create(db, user_id, body)
        except ApiError as exc:
            return await self._users_page(
                request,
                db,
                user_id,
                limit_form=data,
                limit_errors={_LIMIT_FIELD.get(exc.code, "window"): sentence(exc.detail)},
                status=exc.status_code,
            )
        flash(request, "ok", f"{_limit_words(made)} added.")
        return see_other(f"/admin/users?user_id={user_id}")

    @post("/users/{user_id:str}/limits/{limit_id:str}")
    async def change_limit(
        self, request: Request, user_id: FromPath[str], limit_id: FromPath[str], data: Form, db: Db
    ) -> Response:
        back = _user_page(user_id)
        limit_uuid = uuid_or_none(limit_id)
        body, errors = forms.limit_change(data)
        if limit_uuid is None or back is None:
            flash(request, "error", "That limit is not one of this user's.")
        elif body is None:
            flash(request, "error", f"Not changed: {errors['max_credits']}")
        else:
            try:
                changed = await limits_service.change(db, user_id, limit_uuid, body.max_credits)
            except ApiError as exc:
                flash(request, "error", f"Not changed: {sentence(exc.detail)}")
            else:
                flash(request, "ok", f"{_limit_words(changed)} now.")
        return see_other(back or "/admin/users")

    @post("/users/{user_id:str}/limits/{limit_id:str}/remove")
    async def remove_limit(
        self, request: Request, user_id: FromPath[str], limit_id: FromPath[str], db: Db
    ) -> Response:
        back = _user_page(user_id)
        limit_uuid = uuid_or_none(limit_id)
        if limit_uuid is None or back is None:
            flash(request, "error", "That limit is not one of this user's.")
        else:
            try:
                await limits_service.delete(db, user_id, limit_uuid)
            except ApiError as exc:
                flash(request, "error", f"Not removed: {sentence(exc.detail)}")
            else:
                flash(request, "ok", "Limit removed.")
        return see_other(back or "/admin/users")

    @post("/users/{user_id:str}/auto-recharge")
    async def set_auto_recharge(
        self, request: Request, user_id: FromPath[str], data: Form, db: Db
    ) -> Response:
        if (refused := _not_a_user(request, user_id)) is not None:
            return refused
        body, errors = forms.auto_recharge(data)
        if body is None:
            return await self._users_page(
                request, db, user_id, recharge_form=data, recharge_errors=errors, status=400
            )
        try:
            rule = await recharges_service.set_rule(db, user_id, body)
        except ApiError as exc:
            flash(request, "error", f"Not saved: {sentence(exc.detail)}")
            return see_other(f"/admin/users?user_id={user_id}")
        asked = f" A top-up of {rule.pending.amount} is asked for." if rule.pending else ""
        flash(
            request,
            "ok",
            f"Auto-recharge of {rule.amount} at or below {rule.threshold} saved.{asked}",
        )
        return see_other(f"/admin/users?user_id={user_id}#auto-recharge")

    @post("/users/{user_id:str}/auto-recharge/remove")
    async def remove_auto_recharge(
        self, request: Request, user_id: FromPath[str], db: Db
    ) -> Response:
        back = _user_page(user_id)
        if back is None:
            flash(request, "error", f"A user id is {USER_ID_RULE}.")
            return see_other("/admin/users")
        try:
            await recharges_service.delete_rule(db, user_id)
        except ApiError as exc:
            flash(request, "error", f"Not removed: {sentence(exc.detail)}")
        else:
            flash(request, "ok", "Auto-recharge removed; a pending request is canceled.")
        return see_other(f"{back}#auto-recharge")

    @post("/users/{user_id:str}/credits")
    async def credit(
        self, request: Request, user_id: FromPath[str], data: Form, db: Db
    ) -> Response:
        if (refused := _not_a_user(request, user_id)) is not None:
            return refused
        back = f"/admin/users?user_id={user_id}"
        body, errors = forms.credit(data)
        if body is None:
            return await self._users_page(
                request, db, user_id, form=data, errors=errors, status=400
            )
        path = f"/v1/users/{user_id}/credits"
        write = ledger_service.add_credits
        written = await _ledger_write(request, db, data, path, write, user_id, body, "Not saved")
        if written is None:
            return see_other(back)
        tx = written.transaction
        flash(request, "ok", f"{tx.type} of {tx.amount:+d} saved; balance {tx.balance_after}.")
        return see_other(back)

    @get("/transactions/{tx_id:str}/refund")
    async def confirm_refund(self, request: Request, tx_id: FromPath[str], db: Db) -> Response:
        tx_uuid = uuid_or_none(tx_id)
        if tx_uuid is None:
            raise transaction_not_found(tx_id)
        tx, refused = await ledger_service.refundable(db, tx_uuid)
        back = f"/admin/users?user_id={tx.user_id}"
        if refused is not None:
            why = (
                "it was refunded already"
                if refused.code == "already_refunded"
                else f"it is a {tx.type}"
            )
            flash(request, "error", f"That transaction cannot be refunded: {why}.")
            return see_other(back)
        credits = -tx.amount
        return confirm(
            title=f"Refund {credits} credits to {tx.user_id}?",
            consequence=(
                f"The charge of {tx.skill} is given back in full: the balance of {tx.user_id}"
                f" goes up by {credits}. A charge can be refunded once."
            ),
            facts={
                "Skill": f"{tx.skill} ×{tx.units} @ {tx.unit_cost}",
                "Amount charged": f"{tx.amount:+d}",
                "Charged at": present.utc(tx.created_at),
                "Description": tx.description or "(none)",
            },
            action=f"/admin/transactions/{tx.id}/refund",
            fields={"user_id": tx.user_id, "idem": f"refund-{tx.id}"},
            button=f"Yes, refund {credits} credits",
            cancel=back,
        )

    @post("/transactions/{tx_id:str}/refund")
    async def refund(self, request: Request, tx_id: FromPath[str], data: Form, db: Db) -> Redirect:
        user_id = data.get("user_id", "")
        back = (
            f"/admin/users?user_id={user_id}" if USER_ID_RE.fullmatch(user_id) else "/admin/users"
        )
        tx_uuid = uuid_or_none(tx_id)
        if tx_uuid is None:
            flash(request, "error", "That is not a transaction id.")
            return see_other(back)
        body = RefundIn(description=(data.get("description") or "").strip()[:500] or None)
        path = f"/v1/transactions/{tx_uuid}/refund"
        write = ledger_service.refund
        written = await _ledger_write(request, db, data, path, write, tx_uuid, body, "Not refunded")
        if written is None:
            return see_other(back)
        flash(request, "ok", f"Refunded {written.transaction.amount} credits.")
        return see_other(back)


async def _ledger_write(
    request: Request,
    db: Database,
    data: dict[str, str],
    path: str,
    write: Callable[..., Awaitable[ledger_service.Written]],
    target: str,
    body: Any,
    refused: str,
) -> ledger_service.Written | None:
    """``write(db, target, body, key, digest)`` for a form, as the API's ``POST path``
    with the form's ``idem`` as its Idempotency-Key (a double submit writes once); None,
    with the error flashed, when the service refuses."""
    key = (data.get("idem") or "")[:64] or None
    digest = idempotency.request_hash("POST", path, body, key)
    try:
        return await write(db, target, body, key, digest)
    except ApiError as exc:
        flash(request, "error", f"{refused}: {exc.detail}.")
        return None


# the field of the limit form a refusal is shown beside
_LIMIT_FIELD = {"skill_not_found": "skill", "limit_exists": "window"}


def _not_a_user(request: Request, user_id: str) -> Redirect | None:
    """For a form posted to what cannot be a user id: the error flashed and the way back
    to the users page; None for a user id."""
    if USER_ID_RE.fullmatch(user_id):
        return None
    flash(request, "error", f"A user id is {USER_ID_RULE}.")
    return see_other("/admin/users")


def _user_page(user_id: str) -> str | None:
    """The admin page of ``user_id``; None for what cannot be a user id."""
    return f"/admin/users?user_id={user_id}" if USER_ID_RE.fullmatch(user_id) else None


def _limit_words(limit: Any) -> str:
    """A limit in words: "Day limit of 500 for bob on GEO_WRITER"."""
    who = f" for {limit.member}" if limit.member else ""
    what = f" on {limit.skill}" if limit.skill else ""
    return f"{limit.window.capitalize()} limit of {limit.max_credits}{who}{what}"


def _charge_links(user_id: str, items: list[Any], charges: dict[str, Any]) -> dict[str, dict]:
    """For each charge a refund on this page refunded: its skill, and a link to its row,
    on this page or on the page that starts with it."""
    here = {t.id for t in items}
    links = {}
    for charge_id, c in charges.items():
        page = ""
        if charge_id not in here:
            page = f"/admin/users?user_id={user_id}&cursor={encode_cursor(c.seq + 1)}"
        links[charge_id] = {
            "skill": c.skill,
            "units": c.units,
            "unit_cost": c.unit_cost,
            "href": f"{page}#tx-{charge_id}",
        }
    return links
