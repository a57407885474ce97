"""A host application with two fake AI tools, billed through skill-credits.

Run skill-credits (`make run`), register the skills and a service key:

    curl -X POST localhost:8000/v1/admin/skills -H "Authorization: Bearer $ADMIN_KEY" \\
         -d '{"name": "SUMMARIZE", "display_name": "Summarizer", "cost": 5}'
    curl -X POST localhost:8000/v1/admin/skills -H "Authorization: Bearer $ADMIN_KEY" \\
         -d '{"name": "TRANSCRIBE", "display_name": "Transcriber (per second)", "cost": 1}'
    skill-credits keys create --role service --name example-app

then `SKILL_CREDITS_KEY=... uv run python examples/ai_tool_app.py` serves it on :8001.
Users are told apart by an `X-User-Id` header here, and the member of a shared balance
who spends (a teammate, an agent) by `X-Member`; a real app takes both from its own auth.
"""

from __future__ import annotations

import os

from litestar import Litestar, Request, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import JSONBody
from msgspec import Struct

from skill_credits.host.plugin import Charged, Held, SkillCredits, charge, hold


class TextIn(Struct):
    text: str


class Summary(Struct):
    summary: str
    credits_charged: int
    balance_after: int


class AudioIn(Struct):
    audio: str  # pretend audio: one character is a tenth of a second
    fail: bool = False


class Transcript(Struct):
    text: str
    seconds_billed: int


@post("/tools/summarize", dependencies={"billing": charge("SUMMARIZE")})
async def summarize(data: JSONBody[TextIn], billing: NamedDependency[Charged]) -> Summary:
    """Charged before it runs; refunded automatically when the model fails."""
    if "fail" in data.text:
        raise HTTPException(status_code=502, detail="the model failed; you were not charged")
    tx = billing.transaction
    return Summary(
        summary=data.text[:40], credits_charged=-tx.amount, balance_after=tx.balance_after
    )


@post("/tools/transcribe", dependencies={"billing": hold("TRANSCRIBE", units=60)})
async def transcribe(data: JSONBody[AudioIn], billing: NamedDependency[Held]) -> Transcript:
    """Reserves 60 seconds, bills the seconds actually transcribed, releases on failure."""
    if data.fail:
        raise HTTPException(status_code=502, detail="transcription failed; nothing was billed")
    seconds = max(1, min(60, -(-len(data.audio) // 10)))
    billing.use(seconds)
    return Transcript(text=data.audio.upper(), seconds_billed=seconds)


def user_of(request: Request) -> str:
    return request.headers.get("X-User-Id", "anonymous")


def member_of(request: Request) -> str | None:
    return request.headers.get("X-Member")


def create_app(base_url: str, api_key: str) -> Litestar:
    billing = SkillCredits(base_url=base_url, api_key=api_key, user_id=user_of, member=member_of)
    return Litestar(route_handlers=[summarize, transcribe], plugins=[billing])


if __name__ == "__main__":
    import uvicorn

    app = create_app(
        os.environ.get("SKILL_CREDITS_URL", "http://127.0.0.1:8000"),
        os.environ["SKILL_CREDITS_KEY"],
    )
    uvicorn.run(app, host="127.0.0.1", port=8001)
