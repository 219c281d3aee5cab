"""The config contract and the command line: errors name the key and the file; --help everywhere."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from relay.cli import build_parser
from relay.config import ConfigError, load_config
from tests.conftest import CERTIFICA, ROOT


def test_shipped_config_loads_and_matches_the_embedded_defaults_where_it_should() -> None:
    cfg = load_config(ROOT / "config.toml")
    embedded = load_config(None)
    assert cfg.gateway.hostname == embedded.gateway.hostname == "certifica.localhost"
    assert cfg.gateway.certification_address == "certifica@certifica.localhost"
    assert cfg.listen == embedded.listen
    assert cfg.limits == embedded.limits
    assert cfg.queue == embedded.queue
    assert cfg.state_dir == ROOT / "var"  # relative to the config file


def test_shipped_config_documents_every_key() -> None:
    """config.toml is the reference: every key the loader knows is written there."""
    import dataclasses
    import tomllib

    from relay.config import Config

    shipped = tomllib.loads((ROOT / "config.toml").read_text())
    # Deprecated keys are documented where they moved to ([web]), not shipped.
    deprecated = {"tracking.public_url", "tracking.trusted_proxies"}
    missing = []
    for section in dataclasses.fields(Config):
        if section.name in ("source", "deprecations"):
            continue
        table = shipped.get(section.name)
        if table is None:
            missing.append(f"[{section.name}]")
            continue
        for key in dataclasses.fields(section.default_factory()):  # type: ignore[misc]
            name = f"{section.name}.{key.name}"
            if key.name not in table and name not in deprecated:
                missing.append(name)
    assert not missing, missing


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[gateway]\nhostnme = 'x'\n", "unknown key 'gateway.hostnme'"),
        ("[limits]\nrecipients = 'many'\n", "limits.recipients must be a whole number"),
        (
            "[listen]\nsubmission = 'localhost'\n",
            "listen.submission = 'localhost' is not host:port",
        ),
        ("[delivery.routes]\n'example.org' = 'nowhere'\n", "delivery.routes.example.org"),
        ("[dns]\nnameservers = ['resolver.example']\n", "dns.nameservers[0]"),
        (
            "[gateway]\nrelay_uncertified = 'yes'\n",
            "gateway.relay_uncertified must be true or false",
        ),
        ("[nonsense]\n", "unknown key 'nonsense'"),
        ("[mx]\nrequire = 'spf'\n", "mx.require must be"),
        ("[dkim]\nfrom_handling = 'drop'\n", "dkim.from_handling must be"),
        ("[gateway\n", "not valid TOML"),
    ],
)
def test_config_errors_name_key_and_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)


def test_config_error_on_the_command_line_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[limits]\nrecipients = -3\n")
    out = subprocess.run(
        [CERTIFICA, "-c", str(path), "serve"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0
    assert "limits.recipients" in out.stderr and str(path) in out.stderr


def _subcommands(parser, prefix=()):  # type: ignore[no-untyped-def]
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommands(sub, (*prefix, name))


@pytest.mark.parametrize("command", list(_subcommands(build_parser())), ids=" ".join)
def test_every_subcommand_has_help(command: tuple[str, ...]) -> None:
    out = subprocess.run(
        [CERTIFICA, *command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    assert out.stdout.startswith("usage: certifica")
    assert len(out.stdout.splitlines()) >= 3


def test_users_add_list_remove(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[gateway]\nstate_dir = "s"\n')

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CERTIFICA, "-c", str(cfg), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert (
        run("users", "add", "Zoe@Example.com", "--password-stdin", stdin="longenough\n").returncode
        == 0
    )
    bad = run("users", "add", "a@x, b@y", "--password-stdin", stdin="longenough\n")
    assert bad.returncode == 2 and "not a single e-mail address" in bad.stderr
    short = run("users", "add", "amy@example.com", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 8" in short.stderr
    listed = run("users", "list")
    assert "zoe@example.com" in listed.stdout
    assert "longenough" not in (tmp_path / "s" / "queue.db").read_bytes().decode("latin-1")
    assert run("users", "remove", "zoe@example.com").returncode == 0
    missing = run("users", "remove", "zoe@example.com")
    assert missing.returncode == 2 and "no user" in missing.stderr


def test_tracking_keys_moved_to_web_keep_working_with_one_deprecation_line(
    tmp_path: Path,
) -> None:
    """[tracking] public_url and trusted_proxies moved to [web]: the old keys still take
    effect, each with one sentence saying what to rename; set beside the new key, the old
    one is ignored and the sentence says so."""
    config = tmp_path / "config.toml"
    config.write_text(
        '[tracking]\npublic_url = "https://track.example.net"\ntrusted_proxies = ["10.0.0.0/8"]\n'
    )
    cfg = load_config(config)
    assert cfg.web.public_url == "https://track.example.net"
    assert cfg.web.trusted_proxies == ("10.0.0.0/8",)
    assert cfg.deprecations == (
        f"{config}: tracking.public_url is deprecated: rename it web.public_url",
        f"{config}: tracking.trusted_proxies is deprecated: rename it web.trusted_proxies",
    )
    config.write_text(
        '[web]\npublic_url = "https://verify.example.net"\n'
        '[tracking]\npublic_url = "https://track.example.net"\n'
    )
    cfg = load_config(config)
    assert cfg.web.public_url == "https://verify.example.net"
    assert len(cfg.deprecations) == 1 and "ignored: web.public_url is set" in cfg.deprecations[0]
    # A bad value under the old key is named by the old key.
    config.write_text('[tracking]\npublic_url = "ftp://x"\n')
    with pytest.raises(ConfigError, match=r"tracking\.public_url must be an http\(s\) URL"):
        load_config(config)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('[gateway]\nlanguage = "fr"\n', "gateway.language: 'fr' is not a language of the gateway"),
        ('[gateway]\ntimezone = "Europe/Madird"\n', "gateway.timezone: 'Europe/Madird' is not"),
        ('[provider]\npolicy_id = "1.2.3"\n', "provider.policy_id = '1.2.3' is not a URI"),
        ('[provider]\npolicy_id = "urn:oid:1.2.x"\n', "is not a valid urn:oid: URI"),
        ("[web]\nrate_limit = 0\n", "web.rate_limit must be at least 1"),
        ('[web]\npublic_url = "https://v.example/"\n', "web.public_url must be an http(s) URL"),
        ("[evidence]\nlta_delay = 3000000\n", "evidence.lta_delay must be 0 to 2592000"),
        ("[evidence]\nrenew_before = 0\n", "evidence.renew_before must be at least 1 day"),
        ("[retention]\ncontent_days = 0\n", "retention.content_days must be at least 1"),
        ("[retention]\nevidence_years = 0\n", "retention.evidence_years must be at least 1"),
        ("[retention]\ntracking_days = -1\n", "retention.tracking_days must be a whole number"),
        (
            '[signing]\npkcs11_tsa_key_label = "tsa"\n',
            "signing.pkcs11_tsa_key_label needs signing.pkcs11_module",
        ),
    ],
)
def test_reader_and_provider_keys_are_checked(tmp_path: Path, text: str, fragment: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert str(raised.value).startswith(f"{config}: ")
    assert fragment in str(raised.value)
