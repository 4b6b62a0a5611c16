"""``voicealert tokens``: bearer tokens of the HTTP API, each scoped to one tenant.

``create`` prints the token once, on stdout (so ``TOKEN=$(voicealert tokens create ...)``
works); only its SHA-256 digest is stored, so it cannot be shown again. ``list`` never shows
a secret, only the public key id that log lines name.
"""

from __future__ import annotations

import click
import pydantic

from schema import DEFAULT_TENANT, describe_errors
from schema.event import Identifier
from worker import db, tokens
from worker.cli_support import (
    DATABASE,
    BadInput,
    json_option,
    print_json,
    run_async,
    with_db,
    with_environment,
)
from worker.models import ApiToken, TokenScope

_IDENTIFIER: pydantic.TypeAdapter[str] = pydantic.TypeAdapter(Identifier)


def _identifier(option: str, value: str) -> str:
    try:
        return _IDENTIFIER.validate_python(value)
    except pydantic.ValidationError as exc:
        raise BadInput(f"invalid {option}: {describe_errors(exc)[0][1]}") from None


@click.group("tokens")
def tokens_group() -> None:
    """API tokens: create (shown once), list, revoke."""


@with_environment(DATABASE)
@tokens_group.command("create")
@click.option("--tenant", required=True, help="The tenant the token acts in.")
@click.option("--name", required=True, help="A name for the token, unique in the tenant.")
@click.option("--scope", type=click.Choice([s.value for s in TokenScope]),
              default=TokenScope.FIRE.value, show_default=True,
              help="fire: send events and read alerts; admin: also manage groups.")
@json_option
@run_async
async def tokens_create(tenant: str, name: str, scope: str, as_json: bool) -> None:
    """Create a token and print it once (it cannot be shown again)."""
    tenant = _identifier("--tenant", tenant)
    name = _identifier("--name", name)
    made = tokens.new_token()
    row = await with_db(lambda conn: db.insert_token(
        conn, tenant, name, TokenScope(scope), made.key_id, made.digest))
    if row is None:
        raise BadInput(f"tenant {tenant!r} already has a live token named {name!r}: "
                       "revoke it first or choose another name")
    if as_json:
        print_json({**row.to_json(), "token": made.token})
        return
    click.echo(made.token)
    click.echo(f"created token {name} (tenant {tenant}, scope {scope}, key id {made.key_id});"
               " it is shown only this once", err=True)


def _token_line(token: ApiToken) -> str:
    state = f"revoked {token.revoked_at:%Y-%m-%d %H:%M:%S%z}" if token.revoked_at else "live"
    return "\t".join([token.tenant, token.name, token.scope, token.key_id,
                      f"{token.created_at:%Y-%m-%d %H:%M:%S%z}", state])


@with_environment(DATABASE)
@tokens_group.command("list")
@click.option("--tenant", default=None, help="Only this tenant's tokens (default: all).")
@json_option
@run_async
async def tokens_list(tenant: str | None, as_json: bool) -> None:
    """List tokens (never their secret): tenant, name, scope, key id, created, state."""
    if tenant is not None:
        tenant = _identifier("--tenant", tenant)
    found = await with_db(lambda conn: db.list_tokens(conn, tenant))
    if as_json:
        print_json([t.to_json() for t in found])
        return
    if not found:
        click.echo("no tokens" if tenant is None else f"no tokens in tenant {tenant}")
        return
    click.echo("\t".join(["TENANT", "NAME", "SCOPE", "KEY ID", "CREATED", "STATE"]))
    for token in found:
        click.echo(_token_line(token))


@with_environment(DATABASE)
@tokens_group.command("revoke")
@click.argument("name")
@click.option("--tenant", default=DEFAULT_TENANT, show_default=True,
              help="The tenant of the token.")
@run_async
async def tokens_revoke(name: str, tenant: str) -> None:
    """Revoke the live token NAME: every request with it is refused from now on."""
    tenant, name = _identifier("--tenant", tenant), _identifier("NAME", name)
    revoked = await with_db(lambda conn: db.revoke_token(conn, tenant, name))
    if revoked is None:
        raise BadInput(f"no live token {name!r} in tenant {tenant!r}")
    click.echo(f"revoked {revoked.name} (tenant {revoked.tenant}, key id {revoked.key_id})")
