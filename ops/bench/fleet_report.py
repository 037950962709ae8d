"""The fleet benchmark's (``fleet.py``) verdict and its table (Markdown, for the README)."""

from __future__ import annotations

from typing import Any

#: The issue's goal for the write-unavailable window of an online move (ms).
MOVE_GOAL_MS = 1000.0


def verdict(r: dict[str, Any]) -> list[str]:
    """What failed: lost writes, errors on the servers not at fault, a fleet left inconsistent, a missed goal."""
    failures = []
    if r.get("lost"):
        failures.append(f"{r['lost']} acknowledged writes lost")
    if r["restart"]["other_tenants_errors"]:
        failures.append(f"(1) {r['restart']['other_tenants_errors']} errors on the other server's tenants")
    kill = r["kill"]
    if kill["orphans_left"] or kill["half_moved"] or kill["running_operations_left"] or kill["findings_left"]:
        failures.append(
            f"(2) not converged: orphans {kill['orphans_left']}, half-moved {kill['half_moved']}, running "
            f"{kill['running_operations_left']}, findings {kill['findings_left']}"
        )
    if r["moves"]["failed"]:
        failures.append(f"(3) moves failed: {r['moves']['failed']}")
    if not r["final"]["converged"]:
        failures.append(f"final state: {r['final']}")
    big = r.get("big_move")
    if big:
        if big["lost"]:
            failures.append(f"(4) {big['lost']} acknowledged writes lost")
        if big["freeze_ms"] >= MOVE_GOAL_MS or big["longest_write_gap_ms"] >= MOVE_GOAL_MS:
            failures.append(f"(4) freeze {big['freeze_ms']} ms / longest gap {big['longest_write_gap_ms']} ms "
                            f">= {MOVE_GOAL_MS:.0f} ms")  # fmt: skip
    return failures


def _errors(by_status: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items())) or "none"


def report(r: dict[str, Any]) -> str:
    s, load = r["setup"], r["load"]
    base_rps = load["baseline"]["rps"] or 1.0
    out = [
        f"Results ({s['tenants_per_server']} tenants on each of 2 servers, 3 processes, {s['connections']} "
        f"connections, {s['duration_s']:.0f} s runs, {s['load']}, PostgreSQL {s['postgresql']} fsync={s['fsync']}):",
        "",
        "| Load | req/s | p50 ms | p99 ms | errors | vs baseline |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key in ("baseline", "one", "three"):
        x = load[key]
        out.append(f"| {x['label']} | {x['rps']:.0f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['errors']:.0f} | "
                   f"{x['rps'] / base_rps:.2f}x |")  # fmt: skip
    rs, kill, mv = r["restart"], r["kill"], r["moves"]
    out += [
        "",
        "| Under load | result | acknowledged writes lost | background load |",
        "|---|---|---:|---|",
        f"| (1) server `{rs['server']}` {'crashed' if rs['mode'] == 'immediate' else 'shut down'} and restarted "
        f"(stop {rs['stop_s']:.1f} s, start {rs['start_s']:.1f} s)"
        f" | {_restart(rs)} | {rs['lost']} of {rs['acknowledged']} | {_bg(rs)} |",
        f"| (2) kill -9 of process 3 during {kill['provisions']} provisionings + {kill['moves']} moves "
        f"(killed at {kill['killed_after_s']:.1f} s, {kill['interrupted']} requests cut) | {_kill(kill)} | "
        f"{kill['lost']} of {kill['acknowledged']} | {_bg(kill)} |",
        f"| (3) {mv['moves']} busy tenants moved | freeze min / median / max **{_mmm(mv['freeze_ms'])} ms**; longest "
        f"write gap {_mmm(mv['longest_write_gap_ms'])} ms; move {_mmm(mv['move_s'])} s; write errors "
        f"{_errors(mv['write_errors_by_status'])} | {mv['lost']} of {mv['acknowledged']} | {_bg(mv)} |",
    ]
    big = r.get("big_move")
    if big:
        out.append(
            f"| (4) move of a {big['database_mb']:.0f} MB tenant ({big['cards']} cards), writer on it, no other load | "
            f"freeze **{big['freeze_ms']:.0f} ms**, longest gap between acknowledged writes "
            f"**{big['longest_write_gap_ms']:.0f} ms** (goal < {MOVE_GOAL_MS:.0f} ms); move {big['move_s']:.1f} s; "
            f"write errors {_errors(big['write_errors_by_status'])} | {big['lost']} of {big['acknowledged']} | none |"
        )
    out.append("")
    out.append(f"final state: {'consistent' if r['final']['converged'] else r['final']}")
    for line in kill["refused"]:
        out.append(f"(2) refused: {line}")
    return "\n".join(out)


def _restart(rs: dict[str, Any]) -> str:
    return (
        f"its busy tenants: {rs['its_tenants_errors']} errors of {rs['its_tenants_writes']} writes "
        f"({_errors(rs['its_tenants_errors_by_status'])}), all served again **{rs['served_again_s']:.1f} s** after "
        f"the stop ({rs['served_again_after_start_s']:.1f} s after PostgreSQL was up); other server's tenants: "
        f"**{rs['other_tenants_errors']}** errors of {rs['other_tenants_writes']}"
    )


def _kill(kill: dict[str, Any]) -> str:
    return (
        f"the burst ended {kill['burst_ended_after_kill_s']:.1f} s after the kill; consistent "
        f"**{kill['converge_s']:.1f} s** after the kill (first settling {_s(kill['first_settling_after_kill_s'])}); "
        f"orphans left **{kill['orphans_left']}**, half-moved **{kill['half_moved']}**, ledger running "
        f"**{kill['running_operations_left']}**; settled: {_errors(kill['settled'])}; burst tenants "
        f"{_errors(kill['burst_tenants_by_status'])}; answers {_answers(kill['answers'])}"
    )


def _s(seconds: float | None) -> str:
    return "none needed" if seconds is None else f"after {seconds:.1f} s"


def _answers(answers: dict[str, dict[str, int]]) -> str:
    return "; ".join(f"{kind} {_errors(by_status)}" for kind, by_status in sorted(answers.items()))


def _mmm(x: dict[str, float]) -> str:
    return f"{x['min']:g} / {x['median']:g} / {x['max']:g}"


def _bg(x: dict[str, Any]) -> str:
    b = x["background_load"]
    return f"{b['rps']:.0f} req/s, p99 {b['p99_ms']:.0f} ms, {b['errors']:.0f} errors"
