"""``voicealert groups``: who is rung, in which order."""

from __future__ import annotations

import click
import pydantic

from schema import Member, describe_errors
from worker import db
from worker.cli_support import (
    DATABASE,
    BadInput,
    confirm,
    json_option,
    print_json,
    run_async,
    tenant_option,
    with_db,
    with_environment,
    yes_option,
)
from worker.logs import mask_phone_numbers
from worker.models import Group


@click.group()
def groups() -> None:
    """Alert groups: who is rung, in which order."""


def _parse_members(values: tuple[str, ...]) -> list[Member]:
    members = []
    for value in values:
        name, sep, phone = value.partition("=")
        if not sep or not name.strip():
            raise BadInput(f"--member {value!r}: expected NAME=PHONE, like 'Alice=+14155550100'")
        try:
            members.append(Member(name=name, phone=phone))
        except pydantic.ValidationError as exc:
            reason = describe_errors(exc)[0][1]
            raise BadInput(f"member {name.strip()!r}: phone {reason}") from None
    return members


def _group_lines(group: Group) -> list[str]:
    lines = [f"{group.name} (tenant {group.tenant}, {len(group.members)} members)"]
    for i, member in enumerate(group.members, start=1):
        lines.append(f"  {i}. {member.name} {mask_phone_numbers(member.phone)}")
    return lines


@with_environment(DATABASE)
@groups.command("set")
@click.argument("name")
@click.option("--member", "members", multiple=True, required=True,
              help="NAME=PHONE in E.164, in ring order; repeat for each member.")
@tenant_option
@json_option
@run_async
async def groups_set(name: str, members: tuple[str, ...], tenant: str, as_json: bool) -> None:
    """Create or replace group NAME with the given members, in order."""
    parsed = _parse_members(members)
    if not name.strip():
        raise BadInput("group name must not be blank")
    group = await with_db(lambda conn: db.upsert_group(conn, tenant, name.strip(), parsed))
    if as_json:
        print_json(group.to_json())
    else:
        click.echo("\n".join(["saved " + _group_lines(group)[0], *_group_lines(group)[1:]]))


@with_environment(DATABASE)
@groups.command("list")
@tenant_option
@json_option
@run_async
async def groups_list(tenant: str, as_json: bool) -> None:
    """List the tenant's groups."""
    found = await with_db(lambda conn: db.list_groups(conn, tenant))
    if as_json:
        print_json([g.to_json() for g in found])
        return
    if not found:
        click.echo(f"no groups in tenant {tenant}")
    for group in found:
        click.echo(f"{group.name}\t{len(group.members)} members")


@with_environment(DATABASE)
@groups.command("show")
@click.argument("name")
@tenant_option
@json_option
@run_async
async def groups_show(name: str, tenant: str, as_json: bool) -> None:
    """Show one group's members (phones masked unless --json)."""
    group = await with_db(lambda conn: db.get_group(conn, tenant, name))
    if group is None:
        raise BadInput(f"no group {name!r} in tenant {tenant!r}")
    if as_json:
        print_json(group.to_json())
    else:
        click.echo("\n".join(_group_lines(group)))


@with_environment(DATABASE)
@groups.command("delete")
@click.argument("name")
@tenant_option
@yes_option
@run_async
async def groups_delete(name: str, tenant: str, yes: bool) -> None:
    """Delete a group (asks first; alerts already raised keep their calls)."""
    group = await with_db(lambda conn: db.get_group(conn, tenant, name))
    if group is None:
        raise BadInput(f"no group {name!r} in tenant {tenant!r}")
    confirm(f"delete group {name} (tenant {tenant}, {len(group.members)} members; alerts "
            "naming it will ring nobody)", yes)
    deleted = await with_db(lambda conn: db.delete_group(conn, tenant, name))
    if not deleted:
        raise BadInput(f"no group {name!r} in tenant {tenant!r}")
    click.echo(f"deleted {name} (tenant {tenant})")
