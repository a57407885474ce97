"""The original design: a ``chargeUser`` function as most teams would write it.

One interactive ORM transaction (SQLAlchemy AsyncSession): read the skill, read the
user, check the balance in Python, then decrement and insert the log row. It has the
design's race: two requests read the same balance and both write.
"""

from __future__ import annotations

import os
import uuid

import msgspec
from litestar import Litestar, Response, post
from litestar.params import JSONBody
from sqlalchemy import BigInteger, Boolean, Integer, String, select
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class SkillConfig(Base):
    __tablename__ = "skills"
    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    name: Mapped[str] = mapped_column(String)
    cost: Mapped[int] = mapped_column(BigInteger)
    is_active: Mapped[bool] = mapped_column(Boolean)


class User(Base):
    __tablename__ = "users"
    user_id: Mapped[str] = mapped_column(String, primary_key=True)
    credits: Mapped[int] = mapped_column(BigInteger)


class CreditTransaction(Base):
    __tablename__ = "transactions"
    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[str] = mapped_column(String)
    type: Mapped[str] = mapped_column(String)
    amount: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    skill_id: Mapped[uuid.UUID] = mapped_column(UUID)
    skill: Mapped[str] = mapped_column(String)
    units: Mapped[int] = mapped_column(Integer)
    unit_cost: Mapped[int] = mapped_column(BigInteger)
    description: Mapped[str | None] = mapped_column(String)


class ChargeIn(msgspec.Struct):
    user_id: str
    skill: str
    description: str | None = None


def create_app() -> Litestar:
    url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(url, pool_size=10, max_overflow=10)
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    @post("/v1/charges")
    async def charge_user(data: JSONBody[ChargeIn]) -> Response:
        async with sessions() as session, session.begin():
            # 1. fetch dynamic cost
            skill = (
                await session.execute(select(SkillConfig).where(SkillConfig.name == data.skill))
            ).scalar_one_or_none()
            if skill is None or not skill.is_active:
                return Response({"error": "Tool disabled"}, status_code=403)
            # 2. check balance
            user = await session.get(User, data.user_id)
            if user is None:
                return Response({"error": "no user"}, status_code=404)
            if user.credits < skill.cost:
                return Response({"error": "Insufficient credits"}, status_code=402)
            # 3. deduct & log
            user.credits = user.credits - skill.cost
            session.add(
                CreditTransaction(
                    user_id=user.user_id,
                    type="CONSUMPTION",
                    amount=-skill.cost,
                    balance_after=user.credits,
                    skill_id=skill.id,
                    skill=skill.name,
                    units=1,
                    unit_cost=skill.cost,
                    description=data.description,
                )
            )
        return Response({"success": True, "remaining": user.credits}, status_code=201)

    async def stop(_: Litestar) -> None:
        await engine.dispose()

    return Litestar(route_handlers=[charge_user], on_shutdown=[stop], openapi_config=None)
