"""Model-based test: random sequences against a real server, checked against a tiny model.

Rules create and edit skills, add and adjust credits, charge (with and without
Idempotency-Keys, reusing keys on purpose), refund, and fire concurrent bursts. After
every step each touched user's balance must equal the model's, and at the end the log
must reconcile. A failing sequence Hypothesis finds is to be copied into
test_ledger.py as a plain regression test.
"""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.support.databases import problems
from tests.support.processes import AppServer
from tests.support.run import record, run_in_thread


@pytest.fixture(scope="module")
def model_server(server_env):
    with AppServer(server_env, workers=1) as server:
        yield server


@pytest.fixture
def machine(model_server, keys, database_url):
    class Ledger(RuleBasedStateMachine):
        skills = Bundle("skills")
        users = Bundle("users")

        def __init__(self) -> None:
            super().__init__()
            self.http = httpx.Client(base_url=model_server.url, timeout=20)
            self.run = uuid.uuid4().hex[:8]
            self.cost: dict[str, int] = {}
            self.active: dict[str, bool] = {}
            self.credits: dict[str, int] = {}
            # the log the model expects, oldest first: (type, amount, balance_after)
            self.log: dict[str, list[tuple[str, int, int]]] = {}
            self.charges: dict[str, tuple[str, int]] = {}  # tx id -> (user, amount)
            self.refunded: set[str] = set()
            self.answers: dict[tuple[str, str], tuple[tuple, dict]] = {}

        def teardown(self) -> None:
            self.http.close()

        def admin(self, **extra) -> dict:
            return keys.auth("admin") | extra

        @initialize(target=users)
        def first_user(self):
            return self.make_user(25)

        def make_user(self, amount: int) -> str:
            user = f"m{self.run}_{len(self.credits)}"
            r = self.http.post(
                f"/v1/users/{user}/credits",
                headers=self.admin(),
                json={"amount": amount, "type": "GRANT"},
            )
            assert r.status_code == 201 and r.json()["balance_after"] == amount
            self.credits[user] = amount
            self.log[user] = [("GRANT", amount, amount)]
            return user

        @rule(target=users, amount=st.integers(1, 60))
        def new_user(self, amount):
            return self.make_user(amount)

        @initialize(target=skills, cost=st.integers(1, 9))
        def first_skill(self, cost):
            return self.create_skill(cost, True)

        @rule(target=skills, cost=st.integers(0, 12), active=st.booleans())
        def create_skill(self, cost, active):
            name = f"M{self.run.upper()}_{len(self.cost)}"
            r = self.http.post(
                "/v1/admin/skills",
                headers=self.admin(),
                json={"name": name, "display_name": name, "cost": cost, "is_active": active},
            )
            assert r.status_code == 201, r.text
            self.cost[name], self.active[name] = cost, active
            return name

        @rule(skill=skills, cost=st.none() | st.integers(0, 12), active=st.none() | st.booleans())
        def edit_skill(self, skill, cost, active):
            body = {k: v for k, v in (("cost", cost), ("is_active", active)) if v is not None}
            r = self.http.patch(f"/v1/admin/skills/{skill}", headers=self.admin(), json=body)
            if not body:
                assert r.status_code == 400
                return
            assert r.status_code == 200, r.text
            self.cost[skill] = cost if cost is not None else self.cost[skill]
            self.active[skill] = active if active is not None else self.active[skill]
            assert (r.json()["cost"], r.json()["is_active"]) == (
                self.cost[skill],
                self.active[skill],
            )

        @rule(user=users, amount=st.integers(1, 40), kind=st.sampled_from(["GRANT", "PURCHASE"]))
        def add_credits(self, user, amount, kind):
            r = self.http.post(
                f"/v1/users/{user}/credits",
                headers=self.admin(),
                json={"amount": amount, "type": kind},
            )
            assert r.status_code == 201
            self.credits[user] += amount
            self.log[user].append((kind, amount, self.credits[user]))
            assert r.json()["balance_after"] == self.credits[user]

        @rule(user=users, amount=st.integers(1, 50))
        def adjust_down(self, user, amount):
            r = self.http.post(
                f"/v1/users/{user}/credits",
                headers=self.admin(),
                json={"amount": -amount, "type": "ADJUSTMENT"},
            )
            if amount > self.credits[user]:
                assert (r.status_code, r.json()["code"]) == (402, "insufficient_credits")
                assert r.json()["required"] == amount
            else:
                assert r.status_code == 201, r.text
                self.credits[user] -= amount
                self.log[user].append(("ADJUSTMENT", -amount, self.credits[user]))
                assert r.json()["balance_after"] == self.credits[user]

        @rule(
            user=users,
            skill=skills,
            units=st.integers(1, 3),
            key=st.none() | st.sampled_from(["k1", "k2", "k3"]),
        )
        def charge(self, user, skill, units, key):
            STEPS.append("charge")
            headers = keys.auth("service") | ({"Idempotency-Key": key} if key else {})
            r = self.http.post(
                "/v1/charges",
                headers=headers,
                json={"user_id": user, "skill": skill, "units": units},
            )
            signature = ("charge", skill, units)
            if key and (user, key) in self.answers:
                seen, answer = self.answers[(user, key)]
                if seen == signature:
                    assert r.status_code == 201 and r.json() == answer
                    assert r.headers["Idempotent-Replayed"] == "true"
                else:
                    assert (r.status_code, r.json()["code"]) == (422, "idempotency_key_reused")
                return
            price = self.cost[skill] * units
            if not self.active[skill]:
                assert (r.status_code, r.json()["code"]) == (403, "skill_disabled")
            elif price > self.credits[user]:
                assert (r.status_code, r.json()["code"]) == (402, "insufficient_credits")
            else:
                assert r.status_code == 201, r.text
                self.credits[user] -= price
                self.log[user].append(("CONSUMPTION", -price, self.credits[user]))
                tx = r.json()
                assert (tx["amount"], tx["balance_after"], tx["unit_cost"]) == (
                    -price,
                    self.credits[user],
                    self.cost[skill],
                )
                self.charges[tx["id"]] = (user, price)
                if key:
                    self.answers[(user, key)] = (signature, tx)

        @rule(data=st.data())
        def refund(self, data):
            if not self.charges:
                return
            tx = data.draw(st.sampled_from(sorted(self.charges)))
            STEPS.append("refund")
            r = self.http.post(f"/v1/transactions/{tx}/refund", headers=keys.auth("service"))
            if tx in self.refunded:
                assert (r.status_code, r.json()["code"]) == (409, "already_refunded")
                return
            assert r.status_code == 201, r.text
            user, amount = self.charges[tx]
            self.credits[user] += amount
            self.log[user].append(("REFUND", amount, self.credits[user]))
            self.refunded.add(tx)
            assert r.json()["balance_after"] == self.credits[user]

        @rule(user=users, skill=skills, n=st.integers(2, 12))
        def burst(self, user, skill, n):
            STEPS.append("burst")

            def one(_):
                with httpx.Client(base_url=model_server.url, timeout=20) as c:
                    return c.post(
                        "/v1/charges",
                        headers=keys.auth("service"),
                        json={"user_id": user, "skill": skill},
                    )

            with ThreadPoolExecutor(n) as pool:
                answers = list(pool.map(one, range(n)))
            codes = [a.status_code for a in answers]
            if not self.active[skill]:
                assert set(codes) == {403}
                return
            cost = self.cost[skill]
            fits = n if cost == 0 else min(n, self.credits[user] // cost)
            assert codes.count(201) == fits and codes.count(402) == n - fits, codes
            before = self.credits[user]
            self.credits[user] -= cost * fits
            for n in range(1, fits + 1):  # concurrent, but written one after another
                self.log[user].append(("CONSUMPTION", -cost, before - cost * n))
            for a in answers:
                if a.status_code == 201:
                    self.charges[a.json()["id"]] = (user, cost)

        @invariant()
        def balances_match(self):
            for user, credits in self.credits.items():
                r = self.http.get(f"/v1/users/{user}", headers=keys.auth("service"))
                assert r.json()["credits"] == credits, (user, r.json(), credits)
                items = self.http.get(
                    f"/v1/users/{user}/transactions",
                    params={"limit": 200},
                    headers=keys.auth("service"),
                ).json()["items"]
                seen = [(t["type"], t["amount"], t["balance_after"]) for t in items]
                assert seen == list(reversed(self.log[user]))[:200], (user, seen[:5])

    return Ledger


STEPS: list[str] = []


def test_ledger_matches_its_model(machine, database_url) -> None:
    STEPS.clear()
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=25,
                stateful_step_count=40,
                deadline=None,
                derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        assert run_in_thread(asyncio.run, problems(database_url)) == []
    # the machine really ran: many charges, some bursts and refunds
    record(
        "model-based ledger",
        {
            "steps": len(STEPS),
            "charges": STEPS.count("charge"),
            "bursts": STEPS.count("burst"),
            "refunds": STEPS.count("refund"),
        },
    )
    assert STEPS.count("charge") >= 10 and "burst" in STEPS and "refund" in STEPS, STEPS
