"""The status tracker's resolver (X.1368 Appendix II: dependency resolution across hardware
revisions, add-on boards and components; R10.b.i outdated detection, R10.b.ii vulnerable releases,
R10.d.i only the newest allowed versions). Pure: catalogs and devices are built in memory, plus
one real full-node index for the adapter.

The property tests check every returned plan with an independent checker written from the rules
(not from the resolver's code): all constraints hold after the plan, no single component could
be raised further, and on small cases the plan equals the brute-force lexicographic best.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_utils import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entities.status_tracker.resolver import (
    Catalog,
    CatalogRelease,
    Component,
    DeviceProfile,
    FindingKind,
    LinePolicy,
    Plan,
    ReasonKind,
    Resolver,
    ResolverError,
    catalog_from_index,
    explain,
    outdated,
    plan,
    plan_fleet,
)
from ledger_node.fullnode import ChainEvent, Index
from ledger_node.record import ZERO_HASH, Dependency, ReleaseData, ReleaseRecord, Version, parse_dependency

V = Version.parse
ANY_MAX = Version(0xFFFF, 0xFFFF, 0xFFFF)


def rel(product: str, version: str, hw: Sequence[str] = ("gw-r1",), deps: Sequence[str] = (),
        vendor: str = "acme", **status: Any) -> CatalogRelease:
    return CatalogRelease(vendor, product, V(version), hashlib.sha256(f"{vendor}/{product}/{version}".encode()).digest(),
                          tuple(hw), tuple(parse_dependency(d) for d in deps), **status)


def device(components: Mapping[str, str], hw: str = "gw-r1", addons: Mapping[str, Sequence[str]] | None = None,
           device_id: str = "dev-1", vendor: str = "acme") -> DeviceProfile:
    return DeviceProfile.build(device_id, hw, {p: (vendor, v) for p, v in components.items()}, addons)


def versions(p: Plan) -> dict[str, str]:
    return {u.product: str(u.to_version) for u in p.upgrades}


def kinds(p: Plan, product: str) -> dict[str, set[ReasonKind]]:
    b = next(b for b in p.blocked if b.product == product)
    return {str(v.version): {r.kind for r in v.reasons} for v in b.verdicts}


def details(p: Plan, product: str, version: str) -> str:
    b = next(b for b in p.blocked if b.product == product)
    return " | ".join(r.detail for v in b.verdicts if str(v.version) == version for r in v.reasons)


# ----------------------------------------------------------------------------- scenarios


def test_hardware_revisions_get_the_newest_release_their_revision_supports() -> None:
    """Appendix II (hardware revisions); R10.d.i: each revision gets the newest release listing it."""
    cat = Catalog([rel("fw", "1.0.0", ("gw-r1", "gw-r2")), rel("fw", "1.5.0", ("gw-r1", "gw-r2")),
                   rel("fw", "2.0.0", ("gw-r2",))], hardware={"gw-r1": 1, "gw-r2": 2})
    r1 = plan(device({"fw": "1.0.0"}, hw="gw-r1"), cat)
    r2 = plan(device({"fw": "1.0.0"}, hw="gw-r2"), cat)
    assert versions(r1) == {"fw": "1.5.0"} and versions(r2) == {"fw": "2.0.0"}
    assert kinds(r1, "fw") == {"2.0.0": {ReasonKind.HARDWARE}}
    assert "does not support hardware class gw-r1 (revision 1); it lists gw-r2" in details(r1, "fw", "2.0.0")
    assert r2.blocked == ()
    unknown = plan(device({"fw": "1.0.0"}, hw="gw-r9"), cat)
    assert not unknown.needed and "hardware class gw-r9 is not registered" in details(unknown, "fw", "2.0.0")


def test_addon_board_components_use_the_board_class_and_its_policy() -> None:
    """Appendix II (add-on sensor boards need different firmware): a board's component is checked
    against the board's hardware class and the board's policy, not the device's."""
    cat = Catalog(
        [rel("main", "1.0.0", ("gw-r1",)), rel("main", "2.0.0", ("gw-r1",)),
         rel("lidar", "1.0.0", ("lidar-b1", "lidar-b2")), rel("lidar", "2.0.0", ("lidar-b1", "lidar-b2")),
         rel("lidar", "3.0.0", ("lidar-b2", "gw-r1")), rel("lidar", "4.0.0", ("lidar-b1",))],
        [LinePolicy("lidar-b1", "acme", "lidar", True, V("0.0.0"), V("2.9.0"))])
    b1 = plan(device({"main": "1.0.0", "lidar": "1.0.0"}, addons={"lidar-b1": ["lidar"]}), cat)
    b2 = plan(device({"main": "1.0.0", "lidar": "1.0.0"}, addons={"lidar-b2": ["lidar"]}), cat)
    assert versions(b1) == {"main": "2.0.0", "lidar": "2.0.0"}
    assert versions(b2) == {"main": "2.0.0", "lidar": "3.0.0"}
    assert b1.upgrade("lidar").hardware_class == "lidar-b1" and b1.upgrade("main").hardware_class == "gw-r1"
    # 3.0.0 lists the device's class but not board b1: the board's class is what counts
    assert kinds(b1, "lidar") == {"4.0.0": {ReasonKind.POLICY_RANGE}, "3.0.0": {ReasonKind.HARDWARE, ReasonKind.POLICY_RANGE}}
    # the same line installed as a main-board component follows the device's class
    assert versions(plan(device({"lidar": "1.0.0"}), cat)) == {"lidar": "3.0.0"}


def test_dependency_chain_across_components_is_planned_dependencies_first() -> None:
    """Appendix II (installed packages have dependencies): A needs B>=2 which needs C>=3; the plan
    upgrades all three, C first, then B, then A."""
    cat = Catalog([rel("a", "1.0.0"), rel("a", "2.0.0", deps=["b>=2.0.0"]),
                   rel("b", "1.0.0"), rel("b", "2.0.0", deps=["c>=3.0.0"]),
                   rel("c", "1.0.0"), rel("c", "3.0.0")])
    p = plan(device({"a": "1.0.0", "b": "1.0.0", "c": "1.0.0"}), cat)
    assert [(u.product, str(u.to_version), u.after) for u in p.upgrades] == [
        ("c", "3.0.0", ()), ("b", "2.0.0", ("c",)), ("a", "2.0.0", ("b",))]
    assert p.groups == () and p.blocked == () and p.complete


def test_an_upgrade_enabled_only_by_upgrading_its_dependency_in_the_same_plan() -> None:
    """Appendix II: a dependency may be met by another component's planned upgrade."""
    cat = Catalog([rel("app", "1.0.0"), rel("app", "2.0.0", deps=["lib>=2.0.0"]),
                   rel("lib", "1.0.0"), rel("lib", "2.0.0")])
    p = plan(device({"app": "1.0.0", "lib": "1.0.0"}), cat)
    assert [u.product for u in p.upgrades] == ["lib", "app"] and versions(p) == {"app": "2.0.0", "lib": "2.0.0"}
    # without a lib 2.0.0 this device may run, app stays, and the reason names the constraint
    cat2 = Catalog([rel("app", "1.0.0"), rel("app", "2.0.0", deps=["lib>=2.0.0"]),
                    rel("lib", "1.0.0"), rel("lib", "2.0.0", revoked=True)])
    p2 = plan(device({"app": "1.0.0", "lib": "1.0.0"}), cat2)
    assert not p2.needed
    assert kinds(p2, "app") == {"2.0.0": {ReasonKind.DEPENDENCY_UNMET}}
    assert details(p2, "app", "2.0.0") == "requires lib>=2.0.0; lib is at 1.0.0 and can reach at most 1.0.0 on this device"


def test_search_falls_back_to_an_older_release_when_the_newest_needs_the_impossible() -> None:
    """Not greedy: the newest A requires a B that cannot be had, so an older A (with its B) wins."""
    cat = Catalog([rel("a", "1.0.0"), rel("a", "2.0.0", deps=["b>=2.0.0"]), rel("a", "3.0.0", deps=["b>=3.0.0"]),
                   rel("b", "1.0.0"), rel("b", "2.0.0"), rel("b", "3.0.0", deps=["c>=5.0.0"]),
                   rel("c", "1.0.0"), rel("c", "2.0.0")])
    p = plan(device({"a": "1.0.0", "b": "1.0.0", "c": "1.0.0"}), cat)
    assert versions(p) == {"a": "2.0.0", "b": "2.0.0", "c": "2.0.0"}
    assert kinds(p, "b") == {"3.0.0": {ReasonKind.DEPENDENCY_UNMET}}
    assert "requires c>=5.0.0" in details(p, "b", "3.0.0")
    # a 3.0.0 is blocked by a conflict (b 3.0.0 fits a alone, not the rest): named with the plan's b
    assert kinds(p, "a") == {"3.0.0": {ReasonKind.CONFLICT}}
    assert details(p, "a", "3.0.0") == "requires b>=3.0.0, but the best consistent plan keeps b at 2.0.0 (see why b is not raised)"


def test_an_upgrade_must_not_break_what_another_component_requires() -> None:
    """Appendix II: upgrading A must not break a dependency B has on A (B kept, or upgraded)."""
    releases = [rel("a", "1.0.0"), rel("a", "2.0.0"), rel("b", "1.0.0", deps=["a>=1.0.0,<2.0.0"])]
    p = plan(device({"a": "1.0.0", "b": "1.0.0"}), Catalog(releases))
    assert not p.needed
    assert kinds(p, "a") == {"2.0.0": {ReasonKind.BREAKS_DEPENDENT}}
    assert "b 1.0.0 requires a>=1.0.0,<=1.65535.65535" in details(p, "a", "2.0.0")
    # once a release of b accepts a 2.0.0, both move together
    p2 = plan(device({"a": "1.0.0", "b": "1.0.0"}), Catalog([*releases, rel("b", "2.0.0", deps=["a>=2.0.0"])]))
    assert versions(p2) == {"a": "2.0.0", "b": "2.0.0"} and [u.product for u in p2.upgrades] == ["a", "b"]


def test_conflicts_with_no_solution_are_explained() -> None:
    """Every candidate that cannot be planned names the constraint: a missing component, an
    unreachable range, and a conflict with a higher-priority component's choice."""
    cat = Catalog([rel("a", "1.0.0"), rel("a", "2.0.0", deps=["c<=1.9.0"]),
                   rel("b", "1.0.0"), rel("b", "2.0.0", deps=["c>=2.0.0"]),
                   rel("c", "1.0.0"), rel("c", "2.0.0"),
                   rel("d", "1.0.0"), rel("d", "2.0.0", deps=["radio>=1.0.0"])])
    p = plan(device({"a": "1.0.0", "b": "1.0.0", "c": "1.0.0", "d": "1.0.0"}), cat)
    # a comes first (priority by product name): a 2.0.0 keeps c below 2, so b 2.0.0 cannot be
    assert versions(p) == {"a": "2.0.0"}
    assert kinds(p, "b") == {"2.0.0": {ReasonKind.CONFLICT}}
    assert details(p, "b", "2.0.0") == "requires c>=2.0.0, but the best consistent plan keeps c at 1.0.0 (see why c is not raised)"
    assert kinds(p, "c") == {"2.0.0": {ReasonKind.CONFLICT}}
    assert details(p, "c", "2.0.0") == "a 2.0.0 (in the best consistent plan) requires c<=1.9.0"
    assert kinds(p, "d") == {"2.0.0": {ReasonKind.DEPENDENCY_MISSING}}
    assert details(p, "d", "2.0.0") == "requires radio>=1.0.0; the device has no radio"


def test_policies_pin_a_version_range_or_forbid_a_line() -> None:
    """The administrator's contracts written beforehand (Appendix II): a set policy pins
    min..max; allowed=False forbids the line; no policy allows whatever the records list."""
    releases = [rel("fw", f"{m}.0.0", ("gw-r1", "gw-r2")) for m in range(1, 6)]
    cat = Catalog(releases, [LinePolicy("gw-r1", "acme", "fw", True, V("2.0.0"), V("3.0.0")),
                             LinePolicy("gw-r2", "acme", "fw", False)])
    pinned = plan(device({"fw": "1.0.0"}, hw="gw-r1"), cat)
    assert versions(pinned) == {"fw": "3.0.0"}
    assert kinds(pinned, "fw") == {"5.0.0": {ReasonKind.POLICY_RANGE}, "4.0.0": {ReasonKind.POLICY_RANGE}}
    assert "allows acme/fw 2.0.0..3.0.0 only" in details(pinned, "fw", "5.0.0")
    forbidden = plan(device({"fw": "1.0.0"}, hw="gw-r2"), cat)
    assert not forbidden.needed and all(k == {ReasonKind.POLICY_FORBIDDEN} for k in kinds(forbidden, "fw").values())
    assert versions(plan(device({"fw": "1.0.0"}, hw="gw-r3"), Catalog(
        [rel("fw", "1.0.0", ("gw-r3",)), rel("fw", "2.0.0", ("gw-r3",))], cat.policies))) == {"fw": "2.0.0"}


def test_revoked_vulnerable_and_flagged_releases_are_skipped() -> None:
    """R10.b.ii, R10.d.ii: never a revoked, vulnerable or flagged release, whatever its version."""
    cat = Catalog([rel("fw", "1.0.0"), rel("fw", "2.0.0"), rel("fw", "3.0.0", vulnerable=True, note="CVE-1"),
                   rel("fw", "4.0.0", revoked=True, note="bad key"), rel("fw", "5.0.0", flagged=True)])
    p = plan(device({"fw": "1.0.0"}), cat)
    assert versions(p) == {"fw": "2.0.0"}
    assert kinds(p, "fw") == {"5.0.0": {ReasonKind.FLAGGED}, "4.0.0": {ReasonKind.REVOKED},
                              "3.0.0": {ReasonKind.VULNERABLE}}
    assert "fw 3.0.0 is flagged vulnerable: CVE-1" in details(p, "fw", "3.0.0")
    assert "fw 4.0.0 is revoked: bad key" in details(p, "fw", "4.0.0")
    assert [r.version for r in cat.candidates("gw-r1", "acme", "fw")] == [V("2.0.0"), V("1.0.0")]


def test_never_a_downgrade_nor_a_reinstall() -> None:
    """R10.d.i: only newer versions; a device ahead of every allowed release keeps its own."""
    cat = Catalog([rel("fw", "1.0.0"), rel("fw", "2.0.0"), rel("fw", "3.0.0", ("gw-r2",))])
    assert not plan(device({"fw": "2.0.0"}), cat).needed
    assert not plan(device({"fw": "2.5.0"}), cat).needed
    verdicts = {str(v.version): [r.kind for r in v.reasons] for v in explain(device({"fw": "2.0.0"}), cat, "fw")}
    assert verdicts == {"3.0.0": [ReasonKind.HARDWARE], "2.0.0": [ReasonKind.DOWNGRADE],
                        "1.0.0": [ReasonKind.DOWNGRADE]}
    older = {str(v.version): [r.detail for r in v.reasons] for v in explain(device({"fw": "1.0.0"}), cat, "fw")}
    assert older["2.0.0"] == [] and older["1.0.0"] == ["fw 1.0.0 is the installed version"]
    ahead = explain(device({"fw": "2.5.0"}), cat, "fw")
    assert [r.detail for r in ahead[1].reasons] == ["fw 2.0.0 is older than the installed 2.5.0"]
    with pytest.raises(ResolverError, match="no component 'nope'"):
        explain(device({"fw": "1.0.0"}), cat, "nope")


def test_dependency_cycles_are_detected_and_grouped() -> None:
    """Releases depending on each other cannot be ordered: reported as a group installed together,
    placed after what the group depends on."""
    cat = Catalog([rel("a", "1.0.0"), rel("a", "2.0.0", deps=["b>=2.0.0", "z>=2.0.0"]),
                   rel("b", "1.0.0"), rel("b", "2.0.0", deps=["a>=2.0.0"]),
                   rel("z", "1.0.0"), rel("z", "2.0.0"), rel("y", "1.0.0"), rel("y", "2.0.0", deps=["a>=2.0.0"])])
    p = plan(device({"a": "1.0.0", "b": "1.0.0", "y": "1.0.0", "z": "1.0.0"}), cat)
    assert [u.product for u in p.upgrades] == ["z", "a", "b", "y"]
    assert p.groups == (("a", "b"),)
    assert p.upgrade("a").after == ("b", "z") and p.upgrade("b").after == ("a",)


def test_plans_are_deterministic_whatever_the_input_order() -> None:
    """The same catalog and device in any order give equal plans; the fleet gives the same."""
    base = [rel("a", "1.0.0"), rel("a", "2.0.0", deps=["b>=2.0.0"]), rel("a", "3.0.0", deps=["b>=3.0.0"]),
            rel("b", "1.0.0"), rel("b", "2.0.0"), rel("b", "3.0.0", ("gw-r2",)),
            rel("c", "1.0.0"), rel("c", "2.0.0", deps=["a<=2.0.0"])]
    comps = [Component("a", "acme", V("1.0.0")), Component("b", "acme", V("1.0.0")), Component("c", "acme", V("1.0.0"))]
    rng = random.Random(7)
    expected = plan(DeviceProfile("d", "gw-r1", tuple(comps)), Catalog(base))
    for _ in range(20):
        rng.shuffle(base)
        rng.shuffle(comps)
        assert plan(DeviceProfile("d", "gw-r1", tuple(comps)), Catalog(base)) == expected
    fleet = [DeviceProfile(f"d{i}", "gw-r1", tuple(comps)) for i in range(3)]
    assert [p.device_id for p in plan_fleet(fleet, Catalog(base))] == ["d0", "d1", "d2"]
    assert all(p.upgrades == expected.upgrades and p.blocked == expected.blocked
               for p in plan_fleet(fleet, Catalog(base)))


def test_fleet_planning_shares_results_between_equal_profiles() -> None:
    """Devices with the same profile (not the same id) are resolved once."""
    cat = Catalog([rel("fw", "1.0.0"), rel("fw", "2.0.0"), rel("fw", "2.0.0", ("gw-r2",), vendor="other")])
    fleet = [device({"fw": "1.0.0"}, device_id=f"d{i}") for i in range(50)] + [device({"fw": "2.0.0"}, device_id="x")]
    r = Resolver(cat)
    plans = r.plan_fleet(fleet)
    assert len(plans) == 51 and r.profiles == 2 and r.hits == 49
    assert plans[0].upgrades is plans[49].upgrades and plans[49].device_id == "d49" and not plans[50].needed
    assert versions(plans[0]) == {"fw": "2.0.0"}


def test_outdated_lists_the_reason_per_component() -> None:
    """R10.b.i (outdated detected, with the reason: hardware, dependency), R10.b.ii (running a
    vulnerable or revoked release); C11.2.a (up-to-date versus outdated)."""
    cat = Catalog([rel("fw", "1.0.0", ("gw-r1", "gw-r2")), rel("fw", "2.0.0", ("gw-r2",)),
                   rel("app", "1.0.0"), rel("app", "2.0.0", deps=["lib>=3.0.0"]),
                   rel("lib", "1.0.0", vulnerable=True, note="CVE-9"), rel("lib", "1.1.0")])
    r = outdated(device({"fw": "1.0.0", "app": "1.0.0", "lib": "1.0.0"}), cat)
    assert r and r.outdated
    by = {(f.product, f.kind): f for f in r.findings}
    assert set(by) == {("fw", FindingKind.BEHIND), ("app", FindingKind.BEHIND), ("lib", FindingKind.VULNERABLE),
                       ("lib", FindingKind.BEHIND)}
    assert "does not support hardware class gw-r1" in by["fw", FindingKind.BEHIND].detail
    assert "requires lib>=3.0.0" in by["app", FindingKind.BEHIND].detail
    assert by["lib", FindingKind.VULNERABLE].detail == "installed 1.0.0 is flagged vulnerable (CVE-9); the plan installs 1.1.0"
    assert by["lib", FindingKind.BEHIND].planned == V("1.1.0") and r.plan.needed
    fine = outdated(device({"fw": "2.0.0", "lib": "1.1.0"}, hw="gw-r2"), cat)
    assert not fine and fine.findings == () and not fine.plan.needed
    unknown = outdated(device({"fw": "2.0.0", "lib": "0.9.0"}, hw="gw-r2"), cat)
    assert [(f.product, f.kind) for f in unknown.findings] == [("lib", FindingKind.UNKNOWN), ("lib", FindingKind.BEHIND)]
    assert unknown.to_json()["outdated"] is True
    # a newer release that is itself vulnerable does not make a device outdated, nor explain it
    cat2 = Catalog([rel("fw", "1.0.0"), rel("fw", "2.0.0"), rel("fw", "3.0.0", vulnerable=True)])
    behind = outdated(device({"fw": "1.0.0"}), cat2)
    assert behind.reasons == ("fw: behind: installed 1.0.0, newest 2.0.0; the plan installs 2.0.0",)
    assert not outdated(device({"fw": "2.0.0"}), cat2)
    assert not outdated(device({}), cat2) and plan(device({}), cat2) == Plan("dev-1", ())


def test_already_unmet_dependencies_are_reported_not_blamed_on_the_plan() -> None:
    """A device already breaking a dependency still gets the upgrades that do not make it worse."""
    cat = Catalog([rel("a", "1.0.0", deps=["b>=5.0.0"]), rel("b", "1.0.0"), rel("b", "2.0.0"),
                   rel("c", "1.0.0", deps=["radio>=1.0.0"])])
    p = plan(device({"a": "1.0.0", "b": "1.0.0", "c": "1.0.0"}), cat)
    assert versions(p) == {"b": "2.0.0"}
    assert [str(u) for u in p.unmet] == ["a 1.0.0 requires b>=5.0.0; the device has b 2.0.0",
                                         "c 1.0.0 requires radio>=1.0.0; the device has no radio"]


def test_search_bound_falls_back_to_hill_climbing() -> None:
    """Past max_steps the plan comes from hill climbing: still consistent, marked incomplete."""
    cat = Catalog([rel("a", "1.0.0"), rel("a", "2.0.0", deps=["b>=2.0.0"]),
                   rel("b", "1.0.0"), rel("b", "2.0.0")])
    d = device({"a": "1.0.0", "b": "1.0.0"})
    full, bounded = plan(d, cat), plan(d, cat, max_steps=1)
    assert full.complete and not bounded.complete
    assert versions(full) == {"a": "2.0.0", "b": "2.0.0"}
    # hill climbing raises b first (a 2.0.0 alone breaks), then a: the same plan here
    assert versions(bounded) == versions(full)
    with pytest.raises(ResolverError):
        Resolver(cat, max_steps=0)


def test_bad_profiles_and_catalogs_are_refused() -> None:
    """Inconsistent inputs raise the project's ResolverError, never a bare exception."""
    with pytest.raises(ResolverError, match="listed twice"):
        DeviceProfile("d", "gw", (Component("a", "x", V("1.0.0")), Component("a", "y", V("1.0.0"))))
    with pytest.raises(ResolverError, match="not among the device's add-on boards"):
        DeviceProfile("d", "gw", (Component("a", "x", V("1.0.0"), board="b1"),))
    with pytest.raises(ResolverError, match="not installed"):
        device({"a": "1.0.0"}, addons={"b1": ["zz"]})
    with pytest.raises(ResolverError, match="drives two boards"):
        device({"a": "1.0.0"}, addons={"b1": ["a"], "b2": ["a"]})
    with pytest.raises(ResolverError, match="empty hardware class"):
        device({"a": "1.0.0"}, hw="")
    with pytest.raises(ResolverError, match="two policies"):
        Catalog([], [LinePolicy("gw", "acme", "a", True), LinePolicy("gw", "acme", "a", False)])
    assert device({"a": "1.0.0"}, device_id="x").key == device({"a": "1.0.0"}, device_id="y").key


def test_plan_to_json_is_plain_data() -> None:
    cat = Catalog([rel("a", "1.0.0"), rel("a", "2.0.0"), rel("a", "3.0.0", revoked=True)])
    j = plan(device({"a": "1.0.0"}), cat).to_json()
    assert j["upgrades"][0]["to_version"] == "2.0.0" and j["complete"] is True
    assert j["blocked"][0]["verdicts"][0]["reasons"][0]["kind"] == "revoked"


# ----------------------------------------------------------------------------- the full node adapter


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _record(product: str, version: str, prev: bytes, hw: tuple[str, ...], deps: tuple[Dependency, ...] = ()) -> ReleaseRecord:
    tag = f"acme/{product}/{version}"
    return ReleaseRecord(prev_hash=prev, data=ReleaseData(
        merkle_root=_digest("m" + tag), vendor_name="acme", publish_time=1_700_000_000, product=product,
        version=V(version), file_hash=_digest("f" + tag), file_link=f"https://x/{tag}", file_name=f"{product}.bin",
        file_size=1000, supported_hardware=hw, dependencies=deps))


def test_catalog_from_a_real_full_node_index(tmp_path: Path) -> None:
    """The adapter reads releases (with status and flags), policies and hardware revisions from
    the full node's index; the resolver then plans over them."""
    events: list[ChainEvent] = []

    def ev(event: str, /, **args: Any) -> None:
        b = len(events) + 1
        events.append(ChainEvent(b, 0, "0x" + _digest(f"tx{b}").hex(), event, args, "0x" + _digest(f"blk{b}").hex()))

    ev("VendorAdded", vendor="0x70997970C51812dc3A010C7d01b50e0d17dc79C8", name_hash=keccak(b"acme"), name="acme")
    for hw, revision in (("gw-r1", 1), ("gw-r2", 2)):
        ev("HardwareAdded", hw_key=keccak(hw.encode()), hw_id=hw, revision=revision, enc_key=b"\xaa" * 32)
    lib1 = _record("lib", "1.0.0", ZERO_HASH, ("gw-r1", "gw-r2"))
    lib2 = _record("lib", "2.0.0", lib1.header_hash, ("gw-r1", "gw-r2"))
    lib3 = _record("lib", "3.0.0", lib2.header_hash, ("gw-r1", "gw-r2"))
    fw1 = _record("fw", "1.0.0", ZERO_HASH, ("gw-r1", "gw-r2"))
    fw2 = _record("fw", "2.0.0", fw1.header_hash, ("gw-r1", "gw-r2"), (Dependency("lib", V("2.0.0")),))
    fw3 = _record("fw", "3.0.0", fw2.header_hash, ("gw-r2",))
    stray = _record("fw", "9.0.0", _digest("elsewhere"), ("gw-r1",))  # breaks the chain: flagged
    for r in (lib1, lib2, lib3, fw1, fw2, fw3, stray):
        ev("Published", line=r.line, header_hash=r.header_hash, prev_hash=r.prev_hash, data=r.data_bytes)
    ev("MarkedVulnerable", line=lib3.line, header_hash=lib3.header_hash, by="0x" + "11" * 20, note="CVE-2")
    ev("PolicySet", hw_key=keccak(b"gw-r2"), line=fw1.line, hw_id="gw-r2", vendor_name="acme", product="fw",
       allowed=True, min_version=V("1.0.0").packed, max_version=V("2.0.0").packed)
    index = Index(tmp_path / "index.db")
    try:
        index.bind(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3", 1)
        index.ingest(1, len(events), _digest(f"blk{len(events)}"), events)
        cat = catalog_from_index(index)
    finally:
        index.close()
    assert cat.hardware == {"gw-r1": 1, "gw-r2": 2}
    assert [str(r.version) for r in cat.line("acme", "fw")] == ["9.0.0", "3.0.0", "2.0.0", "1.0.0"]
    assert cat.release("acme", "fw", V("9.0.0")).flagged
    assert cat.release("acme", "lib", V("3.0.0")).vulnerable and cat.release("acme", "lib", V("3.0.0")).note == "CVE-2"
    assert cat.release("acme", "fw", V("2.0.0")).dependencies == (Dependency("lib", V("2.0.0")),)
    assert cat.policy("gw-r2", "acme", "fw") == LinePolicy("gw-r2", "acme", "fw", True, V("1.0.0"), V("2.0.0"))
    p1 = plan(device({"fw": "1.0.0", "lib": "1.0.0"}, hw="gw-r1"), cat)
    p2 = plan(device({"fw": "1.0.0", "lib": "1.0.0"}, hw="gw-r2"), cat)
    assert [(u.product, str(u.to_version)) for u in p1.upgrades] == [("lib", "2.0.0"), ("fw", "2.0.0")]
    assert [(u.product, u.to_version) for u in p2.upgrades] == [(u.product, u.to_version) for u in p1.upgrades]
    assert kinds(p1, "fw") == {"9.0.0": {ReasonKind.FLAGGED},
                               "3.0.0": {ReasonKind.HARDWARE}}
    assert kinds(p2, "fw") == {"9.0.0": {ReasonKind.FLAGGED, ReasonKind.HARDWARE, ReasonKind.POLICY_RANGE},
                               "3.0.0": {ReasonKind.POLICY_RANGE}}
    assert p1.upgrade("fw").header_hash == fw2.header_hash


# ----------------------------------------------------------------------------- properties


PRODUCTS = ("a", "b", "c", "d")
CLASSES = ("h1", "h2")
BOARD = "b1"


@dataclass
class Case:
    releases: list[CatalogRelease]
    policies: list[LinePolicy]
    device: DeviceProfile


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """Up to 4 lines of up to 6 versions; most releases support most classes, some carry one or
    two dependencies (now and then on a product no device has); a few statuses and policies."""
    n_products = draw(st.sampled_from((1, 2, 3, 3, 4, 4, 4)))
    products = PRODUCTS[:n_products]
    releases: list[CatalogRelease] = []
    for p in products:
        for major in sorted(draw(st.sets(st.integers(1, 6), max_size=6))):
            deps = []
            for q in draw(st.lists(st.sampled_from((*products, "zz")), max_size=2, unique=True)):
                if q == p:
                    continue
                lo = draw(st.integers(0, 6))
                hi = draw(st.one_of(st.just(7), st.integers(lo, 7)))
                deps.append(Dependency(q, Version(lo, 0, 0), ANY_MAX if hi == 7 else Version(hi, 0, 0)))
            hw = draw(st.sampled_from([(*CLASSES, BOARD)] * 4 + [(CLASSES[0], BOARD), (CLASSES[1],), (BOARD,)]))
            status = draw(st.sampled_from([{}] * 12 + [{"revoked": True}, {"vulnerable": True}, {"flagged": True}]))
            releases.append(CatalogRelease("acme", p, Version(major, 0, 0), _digest(f"{p}{major}"),
                                           tuple(sorted(hw)), tuple(deps), **status))
    policies = []
    for k in (*CLASSES, BOARD):
        for p in products:
            if draw(st.integers(0, 5)) == 0:
                lo = draw(st.integers(0, 6))
                policies.append(LinePolicy(k, "acme", p, draw(st.integers(0, 3)) > 0, Version(lo, 0, 0),
                                           Version(draw(st.integers(lo, 7)), 0, 0)))
    installed = [p for p in products if draw(st.integers(0, 5)) > 0] or [products[0]]
    on_board = draw(st.sets(st.sampled_from(installed), max_size=1))
    comps = tuple(Component(p, "acme", Version(draw(st.integers(0, 4)), 0, 0), BOARD if p in on_board else None)
                  for p in installed)
    dev = DeviceProfile("dev", draw(st.sampled_from(CLASSES)), comps, (BOARD,) if on_board else ())
    return Case(releases, policies, dev)


def seeded_case(seed: int) -> Case:
    """A denser random case (every product installed low, many dependencies, often mutual):
    conflicts, fall-backs and cycles are common here, rare in :func:`cases`."""
    rng = random.Random(seed)
    products = PRODUCTS[: rng.choice((3, 4))]
    releases = []
    for p in products:
        for major in range(1, rng.randint(2, 6) + 1):
            deps = []
            for q in products:
                if q != p and rng.random() < 0.45:
                    lo = rng.randint(0, 5)
                    hi = 7 if rng.random() < 0.6 else rng.randint(lo, 6)
                    deps.append(Dependency(q, Version(lo, 0, 0), ANY_MAX if hi == 7 else Version(hi, 0, 0)))
            hw = CLASSES if rng.random() < 0.85 else (CLASSES[1],)
            status = {"revoked": True} if rng.random() < 0.08 else {}
            releases.append(CatalogRelease("acme", p, Version(major, 0, 0), _digest(f"{p}{major}"), hw, tuple(deps),
                                           **status))
    comps = tuple(Component(p, "acme", Version(rng.randint(0, 2), 0, 0)) for p in products)
    return Case(releases, [], DeviceProfile("dev", CLASSES[0], comps))


class Checker:
    """The rules, written independently of the resolver, over final versions {product: major}."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.dev = case.device
        self.installed = {c.product: c.version for c in self.dev.components}
        self.comp = {c.product: c for c in self.dev.components}
        self.rel = {(r.product, r.version): r for r in case.releases}
        self.pol = {(p.hardware_class, p.product): p for p in case.policies}

    def klass(self, product: str) -> str:
        return self.comp[product].board or self.dev.hardware_class

    def allowed(self, r: CatalogRelease) -> bool:
        """Rules 1-3 for release r on the component's class."""
        pol = self.pol.get((self.klass(r.product), r.product))
        return (not (r.revoked or r.vulnerable or r.flagged) and self.klass(r.product) in r.hardware
                and (pol is None or (pol.allowed and pol.min_version <= r.version <= pol.max_version)))

    def violations(self, final: Mapping[str, Version]) -> list[str]:
        out = []

        def holds(d: Dependency, state: Mapping[str, Version]) -> bool:
            return d.product in state and d.min_version <= state[d.product] <= d.max_version

        for p, v in final.items():
            inst = self.installed[p]
            if v == inst:
                r = self.rel.get((p, v))
                for d in (r.dependencies if r else ()):
                    if holds(d, self.installed) and not holds(d, final):
                        out.append(f"{p} {v} kept: {d} broken")
                continue
            r = self.rel.get((p, v))
            if r is None or v < inst or not self.allowed(r):
                out.append(f"{p} {v} not an allowed upgrade")
                continue
            out.extend(f"{p} {v}: {d} unmet" for d in r.dependencies if not holds(d, final))
        return out

    def raisable(self, final: Mapping[str, Version]) -> list[str]:
        out = []
        for r in self.case.releases:
            if r.product in final and r.version > final[r.product] and self.allowed(r):
                trial = {**final, r.product: r.version}
                if not self.violations(trial):
                    out.append(f"{r.product} could be {r.version}")
        return out

    def best(self) -> dict[str, Version]:
        """Brute force: the lexicographic best consistent assignment, products by name."""
        names = sorted(self.installed)
        options = [[self.installed[p]] + [r.version for r in self.case.releases
                                          if r.product == p and r.version > self.installed[p] and self.allowed(r)]
                   for p in names]
        best: tuple[Version, ...] | None = None
        for combo in itertools.product(*options):
            if not self.violations(dict(zip(names, combo, strict=True))) and (best is None or combo > best):
                best = combo
        assert best is not None
        return dict(zip(names, best, strict=True))


def final_of(p: Plan, dev: DeviceProfile) -> dict[str, Version]:
    out = {c.product: c.version for c in dev.components}
    out.update({u.product: u.to_version for u in p.upgrades})
    return out


def check_order(p: Plan, case: Case) -> None:
    rel = {(r.product, r.version): r for r in case.releases}
    group_of = {q: g for g in p.groups for q in g}
    seen: set[str] = set()
    for u in p.upgrades:
        r = rel[u.product, u.to_version]
        for d in r.dependencies:
            if p.upgrade(d.product) is not None and d.product not in group_of.get(u.product, ()):
                assert d.product in seen, f"{u.product} planned before its dependency {d.product}"
        seen.add(u.product)
    for g in p.groups:
        idx = [i for i, u in enumerate(p.upgrades) if u.product in g]
        assert idx == list(range(idx[0], idx[0] + len(g))), "a cycle group is not contiguous"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(cases(), st.integers(0, 2**32).map(seeded_case)))
def test_every_plan_is_consistent_locally_optimal_and_the_lexicographic_best(case: Case) -> None:
    """For random catalogs and devices: every constraint holds after the plan (checked
    independently), no single component could be raised further, the plan is the brute-force
    lexicographic best, and it is ordered dependencies first."""
    check = Checker(case)
    cat = Catalog(case.releases, case.policies)
    p = plan(case.device, cat)
    final = final_of(p, case.device)
    assert check.violations(final) == []
    assert check.raisable(final) == []
    assert final == check.best()
    assert p.complete
    check_order(p, case)
    # every component left below a newer release explains each newer release
    for b in p.blocked:
        assert b.verdicts and all(v.reasons for v in b.verdicts)
        assert all(v.version > final[b.product] for v in b.verdicts)


@settings(max_examples=300, deadline=None)
@given(st.one_of(cases(), st.integers(0, 2**32).map(seeded_case)), st.integers(1, 4))
def test_bounded_search_still_returns_consistent_locally_optimal_plans(case: Case, steps: int) -> None:
    """With a tiny step bound (hill climbing), plans remain consistent and locally optimal."""
    check = Checker(case)
    p = plan(case.device, Catalog(case.releases, case.policies), max_steps=steps)
    final = final_of(p, case.device)
    assert check.violations(final) == [] and check.raisable(final) == []
    check_order(p, case)


def test_a_pathological_catalog_is_bounded_by_the_step_limit() -> None:
    """Backtracking can be exponential (here 20^5 combinations all fail on the last component):
    the step bound stops it and hill climbing still answers, consistently."""
    releases = [rel("y", "1.0.0")]
    for n in range(1, 21):
        releases.append(rel("zz", f"{n}.0.0", deps=["y>=9.0.0"]))
        releases.extend(rel(x, f"{n}.0.0", deps=[f"zz>={n}.0.0"]) for x in ("x1", "x2", "x3", "x4", "x5", "x6"))
    d = device({"x1": "0.1.0", "x2": "0.1.0", "x3": "0.1.0", "x4": "0.1.0", "x5": "0.1.0", "x6": "0.1.0",
                "y": "1.0.0", "zz": "0.1.0"})
    p = plan(d, Catalog(releases))
    assert not p.complete and not p.needed
    assert details(p, "zz", "20.0.0") == "requires y>=9.0.0; y is at 1.0.0 and can reach at most 1.0.0 on this device"
    assert details(p, "x1", "20.0.0") == "requires zz>=20.0.0, but the best consistent plan keeps zz at 0.1.0 (see why zz is not raised)"
