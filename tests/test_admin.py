"""`vod-admin status` merging, as pure code: roles from each replica's own answer."""

import pytest

from vod.admin import CoordinatorUnreachable, merge_status


def answer(rid, raft, listen, acting=False, standby=False, term=2, table=None):
    return {"replica": {"id": rid, "raft": raft, "listen": listen, "acting_primary": acting, "standby": standby,
                        "term": term, "commit_index": 9},
            "replicas_table": table or {}, "members": [], "groups": [], "last_ruid": 4, "last_applied": 9}


TABLE = {f"h:{i}": {"id": f"c{i}", "raft": f"h:{i}", "listen": f"h:1{i}", "standby": False} for i in (1, 2, 3)}


def test_roles_primary_backup_witness_down():
    doc = merge_status([("h:11", answer("c1", "h:1", "h:11", acting=True, table=TABLE), None),
                        ("h:12", answer("c2", "h:2", "h:12", table=TABLE), None),
                        ("h:13", None, "ConnectionRefusedError")])
    roles = {r["id"]: r["role"] for r in doc["replicas"]}
    assert roles == {"c1": "primary", "c2": "backup", "c3": "down"}
    assert doc["primary"] == "c1" and doc["v"] == 2


def test_no_primary_during_election_and_standby():
    doc = merge_status([("h:11", answer("c1", "h:1", "h:11", table=TABLE), None),
                        ("h:14", answer("c4", "h:4", "h:14", standby=True), None)])
    roles = {r["id"]: r["role"] for r in doc["replicas"]}
    assert doc["primary"] is None
    assert roles["c4"] == "standby" and roles["c1"] == "witness" and roles["c2"] == "unreached"


def test_nobody_answers():
    with pytest.raises(CoordinatorUnreachable):
        merge_status([("h:11", None, "refused")])
