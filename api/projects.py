"""``/api/projects/{project_id}/personas``: seed 003's own paths, onto the account's personas.

Seed 003 scopes personas by project. In Rapport a project is the caller's account, named by
its id or by its name; any other project is 404, the same answer as one that does not exist,
so other accounts' ids cannot be probed. The handlers are those of ``/api/personas``
(``api/personas.py``): the same DTO, messages ("Name is required", "Persona with name
already exists", "Persona not found") and rules. Only the list differs: seed 003's GET
answers a bare array of every persona, where ``/api/personas`` pages.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from api import personas
from api.operations import Operation
from api.responses import JSON
from engine.accounts import ACCOUNT_NAME
from engine.errors import Failure, NotFound

PAGE = 200
"""Personas read a round trip while listing them all."""

Handler = Callable[[Request], Awaitable[Response]]


async def check_project(request: Request) -> None:
    services, account_id = personas.context(request)
    project = request.path_params["project_id"]
    if project == account_id:
        return
    if not ACCOUNT_NAME.match(project):  # neither an account's id nor its name
        raise NotFound("Project not found")
    try:
        named = await services.accounts.resolve(project)
    except NotFound:
        named = None
    if named is None or named.id != account_id:
        raise NotFound("Project not found")


def in_project(handler: Handler) -> Handler:
    """``handler`` for a project's persona; an unknown persona is seed 003's 404."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        await check_project(request)
        try:
            return await handler(request)
        except NotFound:
            raise NotFound("Persona not found") from None

    # Its own name: the OpenAPI document names each operation after its endpoint.
    endpoint.__name__ = f"project_{handler.__name__}"
    return endpoint


async def list_all(request: Request) -> Response:
    await check_project(request)
    services, account_id = personas.context(request)
    chosen = await personas.default_id(services, account_id)
    found: list[personas.PersonaView] = []
    while True:
        page, total = await services.personas.page(account_id, PAGE, len(found))
        media = await services.media.list_many(account_id, [p.id for p in page])
        found += [personas.view(p, chosen, media[p.id]) for p in page]
        if not page or len(found) >= total:
            return JSON(found)


COLLECTION = "/api/projects/{project_id}/personas"
ONE = COLLECTION + "/{persona_id}"
OPERATIONS = [
    Operation("GET", COLLECTION, list_all,
              "Every persona of the project (the caller's account, by id or name), oldest "
              "first, as a bare array (seed 003).", "projects", list[personas.PersonaView]),
    Operation("POST", COLLECTION, in_project(personas.create_persona),
              "Create a persona (201): 400 \"Name is required\", 409 \"Persona with name "
              "already exists\".", "projects", personas.PersonaView, status=201,
              request=personas.PersonaIn, failures=personas.WRITES),
    Operation("GET", ONE, in_project(personas.get_persona), "One persona.", "projects",
              personas.PersonaView),
    Operation("PUT", ONE, in_project(personas.update_persona),
              "Change the fields given; a taken name is 409.", "projects", personas.PersonaView,
              request=personas.PersonaIn, failures=personas.WRITES),
    Operation("DELETE", ONE, in_project(personas.delete_persona),
              "Delete a persona (204); the account's default persona is 409.", "projects",
              status=204, failures=(Failure.CONFLICT,)),
    Operation("POST", ONE + "/generate-image", in_project(personas.generate_image),
              "Generate a portrait from the system prompt (seed 003).", "projects",
              personas.PersonaView,
              failures=(Failure.PRECONDITION_FAILED, Failure.UPSTREAM_FAILED,
                        Failure.UPSTREAM_TIMEOUT)),
]  # fmt: skip
