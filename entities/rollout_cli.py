"""``fwledger tracker rollout ...``: rollouts in waves, and the operator's steering (docs/MODULES.md 4).

``list`` and ``show`` read; ``halt [--reason]``, ``resume``, ``advance``, ``retry`` and
``cancel [--reason]`` act (T9.c, the administrator's key); ``create HEADER_HASH`` sets up a
release's rollout before devices need it; ``target`` and ``schedule`` change which devices it
covers and when it may issue commands. Each is one signed request to the tracker
(``/v1/rollouts...``); ``--json`` prints its answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from rich.table import Table

from .cli import _TRACKER_KEY, _TRACKER_URL, HASH_REF, _tracker_call, emit, json_option, out_console, tracker

__all__: list[str] = []  # click commands registered on their groups


@tracker.group("rollout")
def tracker_rollout() -> None:
    """Rollouts in waves (docs/MODULES.md 4): list, show; halt/resume/advance/retry/cancel, create, target and
    schedule as an administrator (T9.c)."""


def _when(ro: dict[str, Any]) -> str:
    s = ro.get("schedule") or {}
    parts = ([f"starts {s['start']}"] if s.get("start") else []) + (
        [f"windows {', '.join(s['windows'])} UTC"] if s.get("windows") else [])
    return "; ".join(parts) or "any time"


def _rollout_human(ro: dict[str, Any]) -> None:
    name = f"{ro['product']} {ro['to_version']}" if ro["product"] else "(release not indexed yet)"
    out_console.print(f"rollout #{ro['id']} {name} ({ro['header_hash'][:18]}..): {ro['state']}, waves open up to "
                      f"{ro['open_wave']}, {ro['devices']} device(s), {ro['succeeded']} succeeded, "
                      f"{ro['failed']} failed", highlight=False)
    out_console.print(f"  target: {(ro.get('target') or {}).get('describe', 'all devices')}; schedule: {_when(ro)}",
                      highlight=False)
    if ro.get("halt"):
        h = ro["halt"]
        codes = ", ".join(f"{c} x{n}" for c, n in sorted(h.get("codes", {}).items()))
        out_console.print(f"  halted: {h['message']}" + (f" (codes: {codes})" if codes else ""), highlight=False)
        out_console.print(f"  to resume: {h['resume']}", highlight=False)
    if ro.get("cancelled"):
        c = ro["cancelled"]
        out_console.print(f"  cancelled by {c['by']}" + (f": {c['reason']}" if c.get("reason") else ""),
                          highlight=False)
    t = Table()
    for col in ("wave", "share", "status", "devices", "needed", "commanded", "succeeded", "failed", "reported"):
        t.add_column(col)
    for w in ro["waves"]:
        t.add_row(*(str(w.get(k, "")) for k in ("wave", "share", "status", "devices", "needed", "commanded",
                                                 "succeeded", "failed")), f"{w.get('reported', 0)}/{w['devices']}")
    out_console.print(t)


@tracker_rollout.command("list")
@_TRACKER_URL
@_TRACKER_KEY
@json_option
def tracker_rollout_list(tracker_url: str, tracker_key: str | None) -> None:
    """Every rollout, newest first, with per-wave counts, target, schedule, halt or cancellation."""
    rows = _tracker_call(tracker_url, "GET", "/v1/rollouts", tracker_key=tracker_key)

    def human() -> None:
        if not rows:
            out_console.print("no rollouts")
        for ro in rows:
            _rollout_human(ro)

    emit(rows, human)


@tracker_rollout.command("show")
@click.argument("rollout_id", type=click.IntRange(min=1))
@_TRACKER_URL
@_TRACKER_KEY
@json_option
def tracker_rollout_show(rollout_id: int, tracker_url: str, tracker_key: str | None) -> None:
    """One rollout, its waves and each device's state."""
    ro = _tracker_call(tracker_url, "GET", f"/v1/rollouts/{rollout_id}", tracker_key=tracker_key)

    def human() -> None:
        _rollout_human(ro)
        for m in ro.get("members", []):
            out_console.print(f"  wave {m['wave']} {m['device_id']}: {m['state']}"
                              + (f" ({m['code']})" if m.get("code") else ""), highlight=False)

    emit(ro, human)


_REASON = click.option("--reason", default=None, help="Why (kept with the rollout, shown by list and show).")
_DOCS = {"halt": "Halt a rollout: no more commands until it is resumed (administrator key).",
         "resume": "Resume a halted rollout, acknowledging its failures so far (administrator key).",
         "advance": "Open the next wave of a rollout by hand (administrator key).",
         "retry": "Try a rollout's failed devices again, acknowledging their failures and running it again "
                  "(administrator key).",
         "cancel": "Cancel a rollout for good: no more commands for it, its unreported commands superseded; it "
                   "stays listed with who cancelled it, when and why (administrator key)."}


def _rollout_action(action: str) -> Callable[..., None]:
    @click.argument("rollout_id", type=click.IntRange(min=1))
    @_TRACKER_URL
    @_TRACKER_KEY
    @json_option
    def command(rollout_id: int, tracker_url: str, tracker_key: str | None, reason: str | None = None) -> None:
        body = {"reason": reason} if reason is not None else None
        ro = _tracker_call(tracker_url, "POST", f"/v1/rollouts/{rollout_id}/{action}", body, tracker_key=tracker_key)
        emit(ro, lambda: _rollout_human(ro))

    command.__doc__ = _DOCS[action]
    return _REASON(command) if action in ("halt", "cancel") else command


for _action in ("halt", "resume", "advance", "retry", "cancel"):
    tracker_rollout.command(_action)(_rollout_action(_action))


def _waves(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(w) for w in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of shares") from None


def _schedule(start: str | None, windows: tuple[str, ...]) -> dict[str, Any]:
    from .status_tracker.rollout import RolloutError, Schedule

    try:
        Schedule.parse(start, list(windows))
    except RolloutError as exc:
        raise click.BadParameter(str(exc)) from None
    return {"start": start, "windows": list(windows)}


def _target(labels: tuple[str, ...], devices: tuple[str, ...], every: bool) -> dict[str, Any]:
    if sum(map(bool, (labels, devices, every))) > 1:
        raise click.UsageError("give --label, --device or --all, not several")
    return {"labels": list(labels), "devices": list(devices)}


_LABEL = click.option("--label", "labels", multiple=True, metavar="NAME=VALUE",
                      help="Cover the devices whose admission carries this label (repeat: every name must match; "
                           "a name repeated accepts any of its values).")
_DEVICE = click.option("--device", "devices", multiple=True, metavar="ID", help="Cover this device (repeat).")
_START = click.option("--start", default=None, metavar="ISO8601",
                      help="No command before this time (UTC unless it says otherwise).")
_WINDOW = click.option("--window", "windows", multiple=True, metavar="[NAME=VALUE@]HH:MM-HH:MM",
                       help="Daily maintenance window, UTC, for every device or the devices with that label "
                            "(repeat); no command outside it.")


@tracker_rollout.command("create")
@click.argument("header_hash", type=HASH_REF)
@_LABEL
@_DEVICE
@click.option("--waves", callback=_waves, default=None, metavar="S1,S2,..,1",
              help="Cumulative fleet shares of the waves, ending at 1 [the tracker's waves].")
@_START
@_WINDOW
@_TRACKER_URL
@_TRACKER_KEY
@json_option
def tracker_rollout_create(header_hash: str, labels: tuple[str, ...], devices: tuple[str, ...],
                           waves: list[float] | None, start: str | None, windows: tuple[str, ...], tracker_url: str,
                           tracker_key: str | None) -> None:
    """Set up a release's rollout before devices need it: which devices, waves, start and windows
    (refused when the release has a rollout already: use target and schedule). HEADER_HASH: all 64
    hex digits, or a unique prefix of at least 8 (looked up in this home's full node)."""
    from .ledger_cli import header_hash_for

    body = {"header_hash": "0x" + header_hash_for(header_hash), **_target(labels, devices, False), "waves": waves,
            **_schedule(start, windows)}
    ro = _tracker_call(tracker_url, "POST", "/v1/rollouts", body, tracker_key=tracker_key)
    emit(ro, lambda: _rollout_human(ro))


@tracker_rollout.command("target")
@click.argument("rollout_id", type=click.IntRange(min=1))
@_LABEL
@_DEVICE
@click.option("--all", "every", is_flag=True, help="Cover every device (the default of a new rollout).")
@_TRACKER_URL
@_TRACKER_KEY
@json_option
def tracker_rollout_target(rollout_id: int, labels: tuple[str, ...], devices: tuple[str, ...], every: bool,
                           tracker_url: str, tracker_key: str | None) -> None:
    """Set which devices a rollout covers. Devices left out are not offered the release by it (their
    unreported commands for it are superseded); devices taken in join their waves."""
    if not (labels or devices or every):
        raise click.UsageError("give --label, --device or --all")
    body = _target(labels, devices, every)
    ro = _tracker_call(tracker_url, "POST", f"/v1/rollouts/{rollout_id}/target", body, tracker_key=tracker_key)
    emit(ro, lambda: _rollout_human(ro))


@tracker_rollout.command("schedule")
@click.argument("rollout_id", type=click.IntRange(min=1))
@_START
@_WINDOW
@_TRACKER_URL
@_TRACKER_KEY
@json_option
def tracker_rollout_schedule(rollout_id: int, start: str | None, windows: tuple[str, ...], tracker_url: str,
                             tracker_key: str | None) -> None:
    """Set when a rollout may issue commands (replaces its schedule; neither option: any time)."""
    body = _schedule(start, windows)
    ro = _tracker_call(tracker_url, "POST", f"/v1/rollouts/{rollout_id}/schedule", body, tracker_key=tracker_key)
    emit(ro, lambda: _rollout_human(ro))
