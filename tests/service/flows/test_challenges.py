"""service.flows.challenges.prove_batch: a batch of proofs judged in memory with its writes made
one statement per kind (planned) leaves what the same proofs judged one at a time leave — the
same outcomes, the same rows, the same audit entries — on SQLite and PostgreSQL (ASVS4-2.8.5,
NIST-63B4-3.2.2 hold for both because both are the same)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from service import dto
from service.flows import challenges
from service.methods.totp import TotpParameters, code_at
from service.persistence.tables import challenges as challenge_table
from service.schema import ALL_METADATA
from tests.service import test_challenges_api as api_flows
from tests.service.conftest import Api, _api

PARAMS = TotpParameters()
# Derived state or per-run values: the log's tree and checkpoints follow from its leaves.
_SKIPPED_TABLES = {"audit_head", "audit_subtrees", "audit_checkpoints"}
# Ids drawn at random (or from a sequence PostgreSQL does not roll back) and the times of
# integration: the same rows otherwise.
_RANDOM_COLUMNS = {
    "outbox_events": {"id"},
    "verification_attempts": {"id"},
    "review_cases": {"id"},
    "review_actions": {"id", "case_id", "audit_inbox_id"},
    "audit_inbox": {"id", "created_at"},
    "audit_log": {"inbox_id", "integrated_at", "leaf_hash"},  # the leaf is compared, see below
}
# Entries' data that name a random id.
_RANDOM_DATA = ("case_id",)
KINDS = ("right", "wrong", "missing", "other_challenge", "previous_step")


@dataclass(frozen=True)
class Slot:
    """An open challenge a proof can be sent to: its request, its method and how to answer."""

    request_id: str
    challenge_id: str
    method: str
    secret: str | None  # TOTP: the account's secret; SMS: the code sent


@dataclass
class Scenario:
    api: Api
    slots: list[Slot]
    escalating: Slot  # its account has one failure left today at TOTP


@pytest.fixture
def scenario(tmp_path: Path, database_url: str) -> Iterator[Scenario]:
    """Accounts with two open TOTP challenges each (two requests: a batch may hold both), an SMS
    challenge, a challenge one attempt from its limit, an account one failure from its daily
    limit (its next failure opens a review case, which a plan leaves to the proof-by-proof
    path), and an unknown account's challenge."""
    # No background integrator: the log's tables change only with the batches compared.
    for api in _api(tmp_path, database_url, audit_integrator=False):
        limits = api.ctx.policy.limits
        slots: list[Slot] = []

        def totp_slot(account: str, secret: str, api: Api = api) -> Slot:
            decision = api_flows._request(api, account)
            started = api_flows._start(api, decision["id"], "totp")
            assert started.status_code == 201, (account, started.text)
            return Slot(decision["id"], started.json()["id"], "totp", secret)

        for n in range(3):
            secret = api_flows._enrol_totp(api, f"acct-plan-{n}", at=api_flows.previous_step())
            slots += [totp_slot(f"acct-plan-{n}", secret) for _ in range(2)]
        api_flows._phone(api, "acct-plan-sms")
        decision = api_flows._request(api, "acct-plan-sms")
        started = api_flows._start(api, decision["id"], "sms")
        assert started.status_code == 201, started.text
        slots.append(Slot(decision["id"], started.json()["id"], "sms", api_flows._sms_code(api)))
        # One attempt left on its challenge.
        secret = api_flows._enrol_totp(api, "acct-plan-last", at=api_flows.previous_step())
        last = totp_slot("acct-plan-last", secret)
        for _ in range(limits.challenge_attempts - 1):
            r = api_flows._verify(api, last.request_id, last.challenge_id, code="000000")
            assert r.status_code == 422, r.text
        slots.append(last)
        # One failure left today at TOTP, and none left (throttled: its proofs are refused
        # before they are judged). Each slot is started first: after the failures the decision
        # offers TOTP no more.
        for account, failures in (
            ("acct-plan-escalates", limits.method_failures_per_day - 1),
            ("acct-plan-throttled", limits.method_failures_per_day),
        ):
            secret = api_flows._enrol_totp(api, account, at=api_flows.previous_step())
            slot = totp_slot(account, secret)
            failing = api_flows._request(api, account)["id"]
            for failed in range(failures):
                if failed % limits.challenge_attempts == 0:
                    challenge = api_flows._start(api, failing, "totp").json()["id"]
                r = api_flows._verify(api, failing, challenge, code="000000")
                assert r.status_code == 422, r.text
            slots.append(slot)
        escalating = slots[-2]
        # An unknown account is offered SMS (its code is never sent, and no code is right).
        decision = api_flows._request(api, "acct-plan-never-seen")
        started = api_flows._start(api, decision["id"], "sms")
        assert started.status_code == 201, started.text
        slots.append(Slot(decision["id"], started.json()["id"], "sms", "123456"))
        yield Scenario(api, slots, escalating)


def _proof(
    scenario: Scenario, slot: Slot, kind: str, other: Slot, now: datetime
) -> challenges.ProofRequest:
    body = dto.VerifyIn()
    if kind != "missing":
        if slot.method == "sms":
            right = slot.secret or ""
        else:
            # The previous step's code was used to confirm the enrolment: a replay.
            at = now - timedelta(seconds=PARAMS.period) if kind == "previous_step" else now
            right = code_at(slot.secret or "", at, PARAMS)
        code = right if kind != "wrong" else f"{(int(right) + 1) % 10**6:06d}"
        body = dto.VerifyIn(code=code)
    challenge_id = other.challenge_id if kind == "other_challenge" else slot.challenge_id
    return challenges.ProofRequest(
        scenario.api.ctx, "plan-test", slot.request_id, challenge_id, body, now
    )


def _outcome(outcome: Any) -> Any:
    """An outcome as plain data: what a caller would learn from it."""
    if isinstance(outcome, Exception):
        return type(outcome).__name__, str(outcome), getattr(outcome, "extra", None)
    if isinstance(outcome, challenges._Later):
        return "later", outcome.loaded.request.id, outcome.challenge.id, outcome.method
    return (
        "accepted",
        msgspec.structs.asdict(outcome.row),
        outcome.index,
        None if outcome.stored is None else msgspec.json.encode(outcome.stored),
    )


async def _snapshot(conn: AsyncConnection) -> dict[str, list[str]]:
    """Every table's rows, without what differs from run to run, in a fixed order."""
    tables: dict[str, list[str]] = {}
    for metadata in ALL_METADATA:
        for table in metadata.sorted_tables:
            if table.name in _SKIPPED_TABLES:
                continue
            dropped = _RANDOM_COLUMNS.get(table.name, set())
            rows = []
            # The inbox in its order (entries are queued in the order their proofs ran), the
            # other tables as sets of rows.
            ordered = table.name == "audit_inbox"
            query = select(table).order_by(table.c.id) if ordered else select(table)
            for row in (await conn.execute(query)).mappings():
                kept = {k: v for k, v in row.items() if k not in dropped}
                if table.name == "outbox_events":
                    payload = json.loads(kept["payload"])
                    payload.pop("event_id")
                    kept["payload"] = payload
                for name in ("leaf", "payload"):
                    if table.name.startswith("audit_") and name in kept:
                        entry = json.loads(bytes(kept[name]))
                        for key in _RANDOM_DATA:
                            entry["data"].pop(key, None)
                        kept[name] = entry
                rows.append(json.dumps(kept, default=str, sort_keys=True))
            tables[table.name] = rows if ordered else sorted(rows)
    return tables


def _run(
    scenario: Scenario,
    batch: list[challenges.ProofRequest],
    *,
    planned: bool,
    covered: list[int] | None = None,
) -> tuple[list[Any], dict[str, list[str]], list[str]]:
    """The batch proved in a transaction that is rolled back afterwards: its outcomes, the
    tables as it left them, and what it logged at warning level. ``covered`` gets how many of
    its proofs the plan judged."""
    warnings: list[str] = []
    plan = challenges._prove_planned

    async def counting(*args: Any) -> Any:
        outcomes = await plan(*args)
        if covered is not None:
            covered.append(len(outcomes))
        return outcomes

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("fairunlock.challenges")

    async def run() -> tuple[list[Any], dict[str, list[str]]]:
        async with scenario.api.ctx.engine.connect() as conn:
            transaction = await conn.begin()
            try:
                outcomes = await challenges.prove_batch(conn, batch, planned=planned)
                return [_outcome(o) for o in outcomes], await _snapshot(conn)
            finally:
                await transaction.rollback()

    logger.addHandler(handler)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(challenges, "_prove_planned", counting)
        try:
            outcomes, tables = scenario.api.run(run)
        finally:
            logger.removeHandler(handler)
    return outcomes, tables, warnings


def _same_tables(got: dict[str, list[str]], expected: dict[str, list[str]]) -> None:
    assert got.keys() == expected.keys()
    for name, rows in got.items():
        assert rows == expected[name], name


# When a proof is made, after the batch's start: at once, a moment later, in the next TOTP step
# (two right codes of one account in one batch can then be of two steps), after its challenge
# expired (a proof that goes the three phases' way).
OFFSETS: tuple[timedelta, ...] = (
    timedelta(0),
    timedelta(milliseconds=3),
    timedelta(seconds=PARAMS.period),
)
OFFSETS += (timedelta(minutes=11),)


@st.composite
def batches(draw: st.DrawFn, count: int) -> list[tuple[int, str, int, timedelta]]:
    """(slot, kind of proof, the slot whose challenge an "other_challenge" proof names, when):
    each slot at most once, as a group commit batches one proof per request."""
    chosen = draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=count, unique=True))
    return [
        (
            i,
            draw(st.sampled_from(KINDS)),
            draw(st.integers(0, count - 1)),
            draw(st.sampled_from(OFFSETS)),
        )
        for i in chosen
    ]


def test_a_planned_batch_leaves_what_its_proofs_one_at_a_time_leave(scenario: Scenario) -> None:
    covered_any = 0

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(chosen=batches(len(scenario.slots)))
    def check(chosen: list[tuple[int, str, int, timedelta]]) -> None:
        nonlocal covered_any
        start = datetime.now(UTC)
        slots = scenario.slots
        batch = [
            _proof(scenario, slots[i], kind, slots[o], start + later)
            for i, kind, o, later in chosen
        ]
        one_at_a_time = _run(scenario, batch, planned=False)
        covered: list[int] = []
        planned = _run(scenario, batch, planned=True, covered=covered)
        assert planned[2] == [], planned[2]  # no plan was taken back: it was right
        assert planned[0] == one_at_a_time[0]
        _same_tables(planned[1], one_at_a_time[1])
        # The plan judged every proof, unless one failed at the account one failure from its
        # daily limit (a review case), or was a TOTP code used again (its holder is told): both
        # left to the proof-by-proof path.
        escalating = scenario.slots.index(scenario.escalating)
        stops = any(
            o[0] == "ProofRejected"
            and (
                i == escalating
                or (slots[i].method == "totp" and o[2].get("reason") == "code_reused")
            )
            for (i, *_), o in zip(chosen, planned[0], strict=True)
        )
        assert len(covered) == 1
        assert stops or covered[0] == len(batch), (covered, len(batch))
        covered_any += sum(1 for o in planned[0][: covered[0]] if o[0] != "later")

    check()
    assert covered_any > 0  # the examples reached the plan's writes


@pytest.mark.parametrize("sabotage", ["rows", "database_error"])
def test_a_plan_the_database_contradicts_is_taken_back_whole(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch, sabotage: str
) -> None:
    """When a planned write changes another number of rows than the plan expected (here one
    challenge closed behind the plan's back, inside its savepoint), or the database refuses a
    statement of the plan (on PostgreSQL the transaction is then aborted until the savepoint is
    rolled back), nothing of the plan stays: the batch is judged again one proof at a time
    from fresh reads and the outcomes and rows are those of that path, with the plan's own
    writes gone (one attempt per proof)."""
    now = datetime.now(UTC)
    first, second = scenario.slots[0], scenario.slots[2]  # two accounts' TOTP challenges
    batch = [_proof(scenario, slot, "right", slot, now) for slot in (first, second)]
    expected = _run(scenario, batch, planned=False)
    write = challenges._Plan.write

    async def sabotaged(self: Any, conn: AsyncConnection) -> None:
        if sabotage == "database_error":
            # A statement the database refuses (an id of NULL), after the plan's first write.
            self.attempts.append(self.attempts[0]._replace(subject=None))
        else:
            await conn.execute(
                update(challenge_table)
                .where(challenge_table.c.id == first.challenge_id)
                .values(status="expired")
            )
        await write(self, conn)

    monkeypatch.setattr(challenges._Plan, "write", sabotaged)
    outcomes, tables, warnings = _run(scenario, batch, planned=True)
    assert [w for w in warnings if "judged one at a time" in w], warnings
    assert outcomes == expected[0]
    _same_tables(tables, expected[1])
    assert [o[0] for o in outcomes] == ["accepted", "accepted"]
    attempts = [json.loads(r) for r in tables["verification_attempts"]]
    mine = [a for a in attempts if a["unlock_request_id"] in (first.request_id, second.request_id)]
    assert sorted(a["outcome"] for a in mine) == ["success", "success"]
