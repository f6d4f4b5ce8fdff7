"""User credentials: derivation bound to user and role, the versioned mode-600 file, `vod-admin user add`."""

import json
import os
import stat

import pytest

from vod import admin
from vod.credentials import UserCredential, derive, read_credential, write_credential
from vod.errors import UsageError
from vod.secrets import write_secret

SECRET = b"k" * 32


def test_a_credential_is_bound_to_its_user_role_and_secret():
    alice = derive(SECRET, "alice", "viewer")
    assert alice == derive(SECRET, "alice", "viewer")  # no table: every coordinator derives the same
    assert alice != derive(SECRET, "alice", "admin")
    assert alice != derive(SECRET, "bob", "viewer")
    assert alice != derive(b"r" * 32, "alice", "viewer")  # rotating the secret voids it


@pytest.mark.parametrize("user, role", [("a|b", "viewer"), ("", "viewer"), ("x" * 65, "viewer"),
                                        ("-dash", "viewer"), ("alice", "root"), (None, "viewer")])
def test_names_and_roles_outside_the_rules_are_refused(user, role):
    with pytest.raises(UsageError):
        derive(SECRET, user, role)


def test_file_round_trip_is_mode_600_and_never_overwrites(tmp_path):
    path = str(tmp_path / "alice.cred")
    issued = UserCredential.issue(SECRET, "alice", "admin")
    write_credential(path, issued)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_credential(path) == issued
    data = json.loads(open(path).read())
    assert data["v"] == 1 and data["format"] == "vod-credential" and data["user"] == "alice"
    assert issued.key.hex() not in repr(issued)
    with pytest.raises(UsageError, match="already exists"):
        write_credential(path, issued)


def test_a_world_readable_credential_file_is_refused_with_the_fix(tmp_path):
    path = str(tmp_path / "alice.cred")
    write_credential(path, UserCredential.issue(SECRET, "alice", "viewer"))
    os.chmod(path, 0o644)
    with pytest.raises(UsageError, match=f"chmod 600 {path}"):
        read_credential(path)


@pytest.mark.parametrize("text, words", [
    ("not json", "not JSON"),
    ('{"v": 1}', "no \"format\""),
    ('{"v": 2, "format": "vod-credential"}', "version 2"),
    ('{"v": 1, "format": "vod-credential", "user": "a", "role": "viewer", "credential": "zz"}', "64 lowercase hex"),
    ('{"v": 1, "format": "vod-credential", "user": "a", "role": "god", "credential": "' + "0" * 64 + '"}', "role"),
])
def test_damaged_files_say_what_is_wrong(tmp_path, text, words):
    path = tmp_path / "bad.cred"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(UsageError, match=words):
        read_credential(str(path))


def test_vod_admin_user_add_needs_the_secret_and_writes_the_file(tmp_path, capsys):
    secret_file = str(tmp_path / "secret")
    secret = write_secret(secret_file).strip()
    out = str(tmp_path / "bob.cred")
    assert admin.entry(["--secret-file", secret_file, "user", "add", "bob", "--role", "admin", "--out", out]) == 0
    assert read_credential(out) == UserCredential.issue(secret, "bob", "admin")
    assert "--credential-file" in capsys.readouterr().out
    with pytest.raises(UsageError, match="give --secret-file, not --credential-file"):
        admin.entry(["--credential-file", out, "user", "add", "carol", "--out", str(tmp_path / "c.cred")])


@pytest.mark.parametrize("command", [["status"], ["groups"], ["servers"], ["strategy", "--dry-run", "m"],
                                     ["user", "revoke", "bob"]])
def test_a_viewer_credential_is_told_at_once_that_cluster_views_need_admin(tmp_path, command):
    path = str(tmp_path / "v.cred")
    write_credential(path, UserCredential.issue(SECRET, "vic", "viewer"))
    with pytest.raises(UsageError, match="needs the admin role.*user vic"):
        admin.entry(["--coordinators", "127.0.0.1:9", "--credential-file", path, *command])
