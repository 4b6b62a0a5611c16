"""``voicealert groups``: who is rung, in which order."""

from __future__ import annotations

import click
import pydantic

from schema import GroupKey, GroupSpec, TenantScope, describe_errors, group_spec
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


def _member_fields(values: tuple[str, ...]) -> list[dict[str, str]]:
    members = []
    for value in values:
        name, sep, phone = value.partition("=")
        if not sep:
            raise BadInput(f"--member {_shown(value)}: expected NAME=PHONE, "
                           "like 'Alice=+14155550100'")
        members.append({"name": name, "phone": phone})
    return members


def _shown(text: str, limit: int = 40) -> str:
    """An argument quoted in an error line: short, and without what would break the line."""
    printable = "".join(ch if ch.isprintable() else "?" for ch in text)
    return repr(printable if len(printable) <= limit else printable[:limit] + "…")


def _problem_line(field: str, reason: str, members: list[dict[str, str]]) -> str:
    """One validation problem of ``groups set``, naming the member by what was typed."""
    where, _, rest = field.partition(".")
    if where == "members" and rest:
        index_text, _, attribute = rest.partition(".")
        index = int(index_text)
        typed = members[index]["name"].strip()
        label = _shown(typed) if 0 < len(typed) <= 40 and typed.isprintable() else f"#{index + 1}"
        separator = " " if reason[:1].islower() else ": "
        return f"member {label}: {attribute}{separator}{reason}"
    what = {"name": "group name", "members": "members", "rounds": "--rounds",
            "round_delay_s": "--round-delay"}.get(field, field)
    return f"{what}: {reason}"


def _spec(name: str, tenant: str, members: list[dict[str, str]], *, rounds: int | None = None,
          round_delay_s: int | None = None) -> GroupSpec:
    """The group as typed, validated whole before any SQL (exit 2 with every problem)."""
    try:
        return group_spec(tenant, name, members, rounds=rounds, round_delay_s=round_delay_s)
    except pydantic.ValidationError as exc:
        problems = [_problem_line(f, r, members) for f, r in describe_errors(exc)]
        raise BadInput("; ".join(problems)) from None


def _key(name: str, tenant: str) -> GroupKey:
    try:
        return GroupKey(tenant=tenant, name=name)
    except pydantic.ValidationError as exc:
        raise BadInput("; ".join(_problem_line(f, r, []) for f, r in describe_errors(exc))) \
            from None


def _tenant(tenant: str) -> str:
    try:
        return TenantScope(tenant=tenant).tenant
    except pydantic.ValidationError as exc:
        raise BadInput("; ".join(_problem_line(f, r, []) for f, r in describe_errors(exc))) \
            from None


def _group_lines(group: Group) -> list[str]:
    lines = [f"{group.name} (tenant {group.tenant}, {len(group.members)} members)"]
    for i, member in enumerate(group.members, start=1):
        lines.append(f"  {i}. {member.name} {mask_phone_numbers(member.phone)}")
    lines.append(f"  rounds: {group.rounds}, {group.round_delay_s} s apart")
    return lines


@with_environment(DATABASE)
@groups.command("set")
@click.argument("name")
@click.option("--member", "members", multiple=True, required=True,
              help="NAME=PHONE in E.164, in ring order; repeat for each member.")
@click.option("--rounds", type=int, default=None,
              help="Rounds of calls while nobody acknowledges, 1-20 (new group: 3; "
                   "left out: kept).")
@click.option("--round-delay", "round_delay", type=int, default=None,
              help="Seconds between two rounds, 0-86400 (new group: 120; left out: kept).")
@tenant_option
@json_option
@run_async
async def groups_set(name: str, members: tuple[str, ...], rounds: int | None,
                     round_delay: int | None, tenant: str, as_json: bool) -> None:
    """Create or replace group NAME with the given members, in order."""
    spec = _spec(name, tenant, _member_fields(members), rounds=rounds, round_delay_s=round_delay)
    group = await with_db(lambda conn: db.upsert_group(
        conn, spec.tenant, spec.name, spec.members, rounds=spec.rounds,
        round_delay_s=spec.round_delay_s))
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
    tenant = _tenant(tenant)
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
    key = _key(name, tenant)
    group = await with_db(lambda conn: db.get_group(conn, key.tenant, key.name))
    if group is None:
        raise BadInput(f"no group {key.name!r} in tenant {key.tenant!r}")
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
    key = _key(name, tenant)
    group = await with_db(lambda conn: db.get_group(conn, key.tenant, key.name))
    if group is None:
        raise BadInput(f"no group {key.name!r} in tenant {key.tenant!r}")
    confirm(f"delete group {key.name} (tenant {key.tenant}, {len(group.members)} members; "
            "alerts naming it will ring nobody)", yes)
    deleted = await with_db(lambda conn: db.delete_group(conn, key.tenant, key.name))
    if not deleted:
        raise BadInput(f"no group {key.name!r} in tenant {key.tenant!r}")
    click.echo(f"deleted {key.name} (tenant {key.tenant})")
