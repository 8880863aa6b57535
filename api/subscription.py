"""``GET /api/subscription/limits``: what the account has used of its plan (seed 000)."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.operations import Operation
from api.responses import JSON
from api.services import Services
from engine.apikeys import Principal


class UsageView(msgspec.Struct, rename="camel"):
    knowledge_units_used: int
    knowledge_units_limit: int
    storage_units_used: float
    storage_units_limit: float
    request_balance: int
    """Addition to seed 000: conversation requests left (each reply spends one)."""


class SubscriptionLimits(msgspec.Struct):
    usage: UsageView


async def figures(services: Services, account_id: str) -> UsageView:
    """The account's figures, as this route and the dashboard's usage route answer them."""
    account = await services.accounts.get(account_id)
    used = await services.accounts.usage(account_id)
    balance = await services.balance.get(account_id)
    return UsageView(
        knowledge_units_used=used.knowledge_units,
        knowledge_units_limit=account.plan.knowledge_units,
        storage_units_used=used.storage_units,
        storage_units_limit=account.plan.storage_units,
        request_balance=balance,
    )


async def limits(request: Request) -> Response:
    services: Services = request.state.services
    principal: Principal = request.state.principal
    return JSON(SubscriptionLimits(usage=await figures(services, principal.account_id)))


OPERATIONS = [
    Operation(
        "GET",
        "/api/subscription/limits",
        limits,
        "Knowledge and storage units used and allowed (seed 000 `usage`), request balance.",
        "subscription",
        SubscriptionLimits,
    ),
]
