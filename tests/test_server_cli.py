"""vod-server's flags: rates, clear errors before anything starts, --help."""

import pytest

from vod.cliutil import run
from vod.errors import UsageError
from vod.secrets import write_secret
from vod.server import cli

from test_server_support import make_store


@pytest.mark.parametrize("text, rate", [
    ("2000", 2000), ("500K", 500_000), ("500k", 500_000), ("2M", 2_000_000), ("1.5M", 1_500_000),
    ("1G", 10**9), ("64Ki", 65_536), ("1.5Mi", 1.5 * 2**20), ("2MB/s", 2_000_000), ("10kb", 10_000),
    ("250KB", 250_000), (".5M", 500_000),
])
def test_parse_rate(text, rate):
    assert cli.parse_rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "-1", "0", "0K", "2X", "K", "1.2.3M", ""])
def test_parse_rate_refuses(text):
    with pytest.raises(UsageError, match="--rate-limit"):
        cli.parse_rate(text)


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret"
    write_secret(str(path))
    return str(path)


def args(tmp_path, secret, *extra, media=None):
    return ["--domain", "d", "--coordinators", "127.0.0.1:7000", "--media", media or str(tmp_path / "store"),
            "--listen", "127.0.0.1:9100", "--secret-file", secret, *extra]


@pytest.mark.parametrize("extra, code, message", [
    (["--rate-limit", "lots"], 2, "--rate-limit: 'lots' is not a rate"),
    (["--capacity", "0"], 2, "--capacity must be at least 1"),
    (["--strategy-wait", "0"], 2, "--strategy-wait must be > 0"),
    (["--listen", "9100"], 2, "--listen: '9100' is not HOST:PORT"),
    (["--coordinators", "a,b"], 2, "--coordinators: 'a' is not HOST:PORT"),
])
def test_bad_flags_fail_before_anything_starts(tmp_path, secret, capsys, extra, code, message):
    make_store(tmp_path / "store", {"m": 3})
    assert run(cli.entry, args(tmp_path, secret, *extra), prog="vod-server") == code
    err = capsys.readouterr().err
    assert err.startswith("vod-server: error: ") and message in err and "Traceback" not in err


def test_an_unknown_store_is_a_clear_error(tmp_path, secret, capsys):
    assert run(cli.entry, args(tmp_path, secret, media=str(tmp_path / "nowhere")), prog="vod-server") == 4
    assert f"no movie store at {tmp_path / 'nowhere'}" in capsys.readouterr().err


def test_an_empty_store_is_a_clear_error(tmp_path, secret, capsys):
    (tmp_path / "store").mkdir()
    assert run(cli.entry, args(tmp_path, secret), prog="vod-server") == 4
    assert "holds no movies" in capsys.readouterr().err


def test_no_secret_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VOD_SECRET_FILE", raising=False)
    argv = args(tmp_path, "x")[:-2]
    assert run(cli.entry, argv, prog="vod-server") == 2
    assert "no domain secret" in capsys.readouterr().err


def test_help_explains_the_flags():
    text = cli.build_parser().format_help()
    for flag in ("--domain", "--coordinators", "--media", "--listen", "--advertise", "--id", "--rate-limit",
                 "--capacity", "--strategy-wait", "--secret-file", "--log-level"):
        assert flag in text
    assert "500K" in text and "(default: None)" not in text
