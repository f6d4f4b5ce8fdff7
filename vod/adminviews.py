"""What `vod-admin` shows, as pure functions: coordinator data in, JSON documents and text tables out.

The JSON forms are stable (documented in the README): a strategy is
`{"ruid", "movie", "client", "state", "backups", "assignments": [{"server",
"frames", "mask", "share"}], "revision", "history"}` where `mask` is the full
mask in the seed's text form, one '0'/'1' per frame of the movie.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

from vod.coordinator.requests import mask_from_text
from vod.strategy.mask import FrameMask
from vod.strategy.placement import Strategy

MASK_PREVIEW = 48


def strategy_doc(record: dict) -> dict:
    """One request record (with its strategy) as the `strategy RUID` / `strategies` JSON object."""
    assignments, backups = [], []
    if record.get("strategy"):
        strategy = Strategy.from_dict(record["strategy"])
        total = sum(a.mask.count() for a in strategy.assignments) or 1
        assignments = [{"server": a.server_id, "frames": a.mask.count(), "mask": a.mask.to_text(),
                        "share": round(a.mask.count() / total, 4)} for a in strategy.assignments]
        backups = list(strategy.backups)
    return {"ruid": record["ruid"], "movie": record["movie"], "client": record["client"], "state": record["state"],
            "frame_count": record["frame_count"], "revision": record.get("revision", 0), "backups": backups,
            "assignments": assignments, "history": record.get("history", []), "reason": record.get("reason", "")}


def short_mask(text: str, width: int = MASK_PREVIEW) -> str:
    return text if len(text) <= width else f"{text[:width]}... ({len(text)} frames)"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Aligned plain-text columns: readable in a terminal and when piped or grepped."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def age(stamp: float | None, now: float | None = None) -> str:
    if stamp is None:
        return "-"
    seconds = max(0.0, (now or time.time()) - stamp)
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def strategies_table(docs: Sequence[dict]) -> str:
    rows = [(d["ruid"], d["movie"], d["client"], d["state"],
             ", ".join(f"{a['server']}:{a['frames']}" for a in d["assignments"]) or "-",
             ", ".join(d["backups"]) or "-") for d in docs]
    return table(["RUID", "movie", "client", "state", "servers:frames", "backups"], rows)


def strategy_text(doc: dict) -> str:
    head = (f"RUID {doc['ruid']}: movie {doc['movie']} ({doc['frame_count']} frames) for {doc['client']}, "
            f"{doc['state']}, revision {doc['revision']}")
    rows = [(a["server"], a["frames"], f"{a['share']:.1%}", short_mask(a["mask"])) for a in doc["assignments"]]
    parts = [head, table(["server", "frames", "share", "mask"], rows),
             f"backups: {', '.join(doc['backups']) or 'none'}"]
    if doc["history"]:
        parts.append("restripes: " + "; ".join(f"revision {h['revision']} after {', '.join(h['failed'])} failed"
                                              for h in doc["history"]))
    return "\n".join(parts)


def requests_table(summaries: Sequence[dict], now: float | None = None) -> str:
    rows = [(s["ruid"], s["request_id"], s["client"], s.get("user") or "-", s["movie"], s["state"],
             age(s["opened_at"], now), age(s["changed_at"], now), s["reason"]) for s in summaries]
    return table(["RUID", "request id", "client", "user", "movie", "state", "age", "in state", "reason"], rows)


def servers_doc(status: dict, summaries: Sequence[dict]) -> list[dict]:
    active = {}
    for s in summaries:
        if s["state"] in ("pending", "strategized", "streaming"):
            for server in s["servers"]:
                active[server] = active.get(server, 0) + 1
    return [{"id": m["id"], "domain": m["domain"], "address": m["address"], "capacity": m["capacity"],
             "movies": m["movies"], "active_streams": active.get(m["id"], 0), "health": m["health"],
             "heartbeat_age": m["heartbeat_age"]} for m in status["members"] if m["kind"] == "server"]


def servers_table(servers: Sequence[dict]) -> str:
    rows = [(s["id"], s["domain"], s["address"], s["capacity"], s["active_streams"], s["health"],
             ", ".join(s["movies"])) for s in servers]
    return table(["server", "domain", "address", "capacity", "streams", "health", "movies"], rows)


def caches_table(caches: Sequence[dict]) -> str:
    rows = [(c["client"], c["movie"], f"{c['frames']}/{c['frame_count']}") for c in caches]
    return table(["client", "movie", "frames held"], rows)


def groups_table(groups: Sequence[dict]) -> str:
    return table(["group", "view", "members"], [(g["name"], g["view_id"], ", ".join(g["members"])) for g in groups])


# -- one request's log (`vod-admin request RUID`): what its user may read about it ---------------------


def _assignment_masks(assignments: Sequence[dict], frame_count: int) -> dict[str, FrameMask]:
    return {a["server"]: mask_from_text(a["mask"], frame_count, f"{a['server']}'s mask") for a in assignments}


def request_log(record: dict) -> dict:
    """Every state change of a request, and per strategy revision which server had which frames.

    `arrived` is what the coordinator knows: a revision's frames that the next revision (a restripe,
    made from the client's held mask) no longer assigns had arrived; in the last revision, the frames
    the client reported at CDONE. None where it cannot know (still streaming, failed, cancelled).
    """
    n = record["frame_count"]
    history = record.get("history", [])
    # Revision r's assignments: those the restripe to r + 1 replaced; the last revision's are the strategy's.
    plans = [(h["revision"] - 1, h.get("replaced")) for h in history]
    if record.get("strategy"):
        plans.append((record["revision"], record["strategy"]["assignments"]))
    started = {}
    for entry in record.get("log", []):
        started.setdefault(entry["revision"], entry["at"])
    restripes = {h["revision"]: h for h in history}
    held = mask_from_text(record["held"], n, "held mask") if record.get("held") else None
    revisions, sources = [], {}
    for i, (revision, assignments) in enumerate(plans):
        if assignments is None:  # a record from before the log was kept: the revision's masks are gone
            continue
        masks = _assignment_masks(assignments, n)
        after = plans[i + 1][1] if i + 1 < len(plans) else None
        later = None
        if after is not None:
            later = FrameMask(n)
            for mask in _assignment_masks(after, n).values():
                later = later | mask
        rows = []
        for server, mask in masks.items():
            arrived = mask - later if later is not None else mask & held if held is not None else None
            count = None if arrived is None else arrived.count()
            if count:
                sources[server] = sources.get(server, 0) + count
            rows.append({"server": server, "frames": mask.count(), "arrived": count, "first": mask.first()})
        restripe = restripes.get(revision)
        revisions.append({"revision": revision, "at": restripe["at"] if restripe else started.get(revision),
                          "reason": "restripe" if restripe else "initial",
                          "failed": list(restripe["failed"]) if restripe else [], "assignments": rows})
    return {"ruid": record["ruid"], "user": record.get("user", ""), "client": record["client"],
            "movie": record["movie"], "frame_count": n, "state": record["state"], "reason": record["reason"],
            "log": list(record.get("log", [])), "revisions": revisions, "sources": sources,
            "held": None if held is None else held.count()}


def clock_time(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) + f".{int(stamp * 1000) % 1000:03d}"


def request_log_text(doc: dict) -> str:
    who = doc["client"] + (f" (user {doc['user']})" if doc["user"] else "")
    parts = [f"RUID {doc['ruid']}: movie {doc['movie']} ({doc['frame_count']} frames) for {who}, {doc['state']}"
             + (f": {doc['reason']}" if doc["reason"] else ""),
             table(["time", "state", "revision", "what happened"],
                   [(clock_time(e["at"]), e["state"], e["revision"], e["reason"]) for e in doc["log"]])]
    for r in doc["revisions"]:
        why = f"restripe after {', '.join(r['failed']) or 'a failure'} failed" if r["reason"] == "restripe" \
            else "initial"
        parts.append(f"revision {r['revision']} ({why}, {clock_time(r['at'])}):")
        parts.append(table(["server", "frames", "arrived", "first frame"],
                           [(a["server"], a["frames"], a["arrived"], a["first"]) for a in r["assignments"]]))
    if doc["sources"]:
        parts.append("frames by server, as far as the coordinator knows: " +
                     ", ".join(f"{server} {count}" for server, count in doc["sources"].items()))
    return "\n".join(parts)

