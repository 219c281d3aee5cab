"""``kill -9`` of the gateway with SMS in flight loses none (docs/sms.md "Delivery"):
the SMSC holds every ``submit_sm`` unanswered, the master is killed with SIGKILL (its
children die with it, PR_SET_PDEATHSIG), and after a restart every SMS is sent, each
part whose first submit was never answered marked *maybe duplicate*; the octets the
SMSC received are the parts stored for the message. Before that, with ``[sms]`` off,
SMS recipients already queued (put there as the intake does: with ``[sms]`` off
submission refuses new ones) wait untouched while mail goes on."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from tests.conftest import Sink, SinkServer, assert_clean_log, start_gateway
from tests.sms_queue import (
    enqueue_sms,
    parts,
    recipient,
    rows,
    sms_config,
    stored_parts,
    submit_sms,
    wait_until,
)
from tests.smsc import Answer, SmscThread

TEXT = "Le recordamos su cita del jueves 4 a las 10:00 en la calle Mayor 12, consulta 3. " * 3


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def child_pids(state: Path) -> list[int]:
    pids = []
    for path in (state / "run" / "status").glob("*.json"):
        try:
            pids.append(int(json.loads(path.read_text())["pid"]))
        except (OSError, ValueError, KeyError):
            continue  # being replaced just now
    return pids


def test_kill_9_with_sms_in_flight_loses_none(sink_server: SinkServer, tmp_path: Path) -> None:
    sink = sink_server.start(Sink())
    routes = {"example.com": sink.port}
    with SmscThread() as smsc:
        # With [sms] off the SMS waits, never leased, while mail is delivered.
        cfg = sms_config(tmp_path, smsc.port, routes, enabled=False, response_timeout=60.0)
        gw = start_gateway(cfg)
        numbers = ["+34600222001", "+34600222002"]
        first, sms = enqueue_sms(gw.state, numbers[:1], TEXT)
        assert sms.segments == 2
        with gw.smtp() as client:
            client.sendmail(
                "alice@example.com",
                ["bob@example.com"],
                b"From: alice@example.com\r\nSubject: hi\r\n\r\nhi\r\n",
            )
        sink.wait_for(lambda msgs: any("bob@example.com" in m.rcpt_tos for m in msgs))
        waiting = recipient(gw.state, first, numbers[0])
        assert (waiting["status"], waiting["handed_out"]) == ("queued", None)
        assert smsc.smsc.binds == 0
        listing = gw.cli("queue", "list")
        assert listing.returncode == 0 and numbers[0] in listing.stdout, listing.stdout
        gw.stop()
        assert_clean_log(gw.log())

        # [sms] on; the SMSC answers nothing: every part is in flight when the gateway dies.
        sms_config(tmp_path, smsc.port, routes, response_timeout=60.0)
        smsc.smsc.answers.extend([Answer.NO_ANSWER] * 4)
        gw = start_gateway(cfg)
        assert gw.cli("org", "add", "ACME", "--name", "Acme S.L.").returncode == 0
        joined = gw.cli("users", "set", "alice@example.com", "--org", "ACME", "--role", "admin")
        assert joined.returncode == 0, joined.stderr
        second = submit_sms(gw, numbers[1:], TEXT)  # through submission, as users send
        smsc.wait_for(lambda: len(smsc.smsc.of("submit_sm")) == 4)
        in_flight = rows(gw.state, "SELECT state FROM sms_parts")
        assert [p["state"] for p in in_flight] == ["submitting"] * 4
        children = child_pids(gw.state)
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(10)
        wait_until(lambda: not any(alive(pid) for pid in children), 20, "children ended")

        # Restart: the SMSC answers again; every part is sent again, as a maybe duplicate.
        smsc.call(smsc.smsc.drop())
        assert not smsc.smsc.answers
        gw = start_gateway(cfg)
        for qid, number in ((first, numbers[0]), (second, numbers[1])):
            wait_until(lambda q=qid, n=number: recipient(gw.state, q, n)["status"] == "submitted")
            sent = parts(gw.state, qid, number)
            assert sorted((p["seq"], p["state"], p["maybe_duplicate"]) for p in sent) == [
                (1, "accepted", 1), (1, "submitting", 0), (2, "accepted", 1), (2, "submitting", 0),
            ]  # fmt: skip
        # Byte for byte: what the SMSC read (smpp34) is what the queue holds, twice each.
        for qid, number in ((first, numbers[0]), (second, numbers[1])):
            got = [
                r.submit.short_message for r in smsc.smsc.of("submit_sm")
                if r.submit.destination_addr == number.lstrip("+")
            ]  # fmt: skip
            stored = stored_parts(gw.state, qid)
            assert len(stored) == 2
            assert sorted(got) == sorted(stored * 2)  # each part twice, octet for octet
        for message_id, _ in list(smsc.smsc.accepted):
            assert smsc.call(smsc.smsc.send_receipt(message_id, "DELIVRD")) == 0
        for qid, number in ((first, numbers[0]), (second, numbers[1])):
            wait_until(lambda q=qid, n=number: recipient(gw.state, q, n)["status"] == "delivered")
        deadline = time.monotonic() + 30
        while rows(gw.state, "SELECT 1 FROM messages WHERE state = 'active'"):
            assert time.monotonic() < deadline, "messages still active"
            time.sleep(0.05)
        gw.stop()
        assert "Traceback" not in gw.log()
