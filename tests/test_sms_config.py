"""``[sms]``: every key checked, errors naming the key and the file; off by default."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import ConfigError, load_config, sms_sender_ok, smsc_password
from relay.sms.smpp import SmscSettings
from tests.conftest import ROOT


def test_off_by_default_and_the_shipped_file_says_the_same() -> None:
    embedded = load_config(None).sms
    assert embedded.enabled is False
    assert load_config(ROOT / "config.toml").sms == embedded
    assert embedded.roles == ("admin",)
    assert embedded.max_segments == 6
    assert embedded.optout_keywords == ("STOP", "BAJA", "BAIXA", "ALT")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("sourse = 'ACME'", "unknown key 'sms.sourse'"),
        ("smsc = 'smsc.example'", "sms.smsc = 'smsc.example' is not host:port"),
        ("default_region = 'XX'", "sms.default_region = 'XX' is not a region code"),
        ("source = 'ACME-SENDER-ID'", "sms.source = 'ACME-SENDER-ID' is not a sender ID"),
        ("source = '600111222'", "is not a sender ID"),
        ("max_segments = 0", "sms.max_segments must be 1 to 255"),
        ("gsm_data_coding = 8", "sms.gsm_data_coding must be"),
        ("optout_scope = 'some'", 'sms.optout_scope must be "marketing" or "all"'),
        ("optout_text = 'STOP {url}'", "sms.optout_text may use only the placeholder"),
        ("optout_keywords = ['STOP NOW']", "sms.optout_keywords[0] must be one word"),
        ("submit_window = 0", "sms.submit_window must be at least 1"),
        ("response_timeout = 0", "sms.response_timeout must be more than 0"),
        ("roles = 'admin'", "sms.roles must be a list"),
        ("roles = ['admin', 'director']", "sms.roles[1] = 'director' is not a role"),
        ("marketing_subject = '[promo'", "sms.marketing_subject is not a regular expression"),
        ("tls = 'yes'", "sms.tls must be true or false"),
        ("enabled = true", "sms.enabled needs sms.smsc"),
        (
            "enabled = true\nsmsc = '127.0.0.1:2775'\nsystem_id = 'e'\nsource = 'ACME'",
            "sms.enabled needs sms.password_file (or the environment variable "
            "CERTIFICA_SMSC_PASSWORD)",
        ),
    ],
)
def test_errors_name_the_key_and_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, fragment: str
) -> None:
    monkeypatch.delenv("CERTIFICA_SMSC_PASSWORD", raising=False)
    path = tmp_path / "bad.toml"
    path.write_text(f"[sms]\n{text}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)


def test_enabled_reads_the_password_from_its_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CERTIFICA_SMSC_PASSWORD", raising=False)
    (tmp_path / "smsc.pw").write_text("s3cret\n")
    path = tmp_path / "ok.toml"
    base = "[sms]\nenabled = true\nsmsc = '127.0.0.1:2775'\nsystem_id = 'esme'\nsource = 'ACME'\n"
    path.write_text(base + "password_file = 'smsc.pw'\ntls = true\n")
    cfg = load_config(path)
    assert smsc_password(cfg) == "s3cret"
    settings = SmscSettings.from_config(cfg)
    assert (settings.host, settings.port, settings.system_id) == ("127.0.0.1", 2775, "esme")
    assert settings.password == "s3cret" and settings.ssl_context is not None
    path.write_text(base)
    monkeypatch.setenv("CERTIFICA_SMSC_PASSWORD", "from-env")
    assert smsc_password(load_config(path)) == "from-env"


@pytest.mark.parametrize(
    "sender, ok",
    [("ACME", True), ("Acme Bank", True), ("ACME1234567", True), ("ACME12345678", False),
     ("+34600111222", True), ("600111222", False), ("", False), ("ÁCME", False)],
)  # fmt: skip
def test_sender_ids(sender: str, ok: bool) -> None:
    assert sms_sender_ok(sender) is ok
