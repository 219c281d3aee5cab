"""The queue database's schema, as numbered, transactional migrations.

Migration *n* is ``MIGRATIONS[n - 1]``; :func:`migrate` applies those not yet applied,
each in its own transaction, and records it in ``schema_migrations``. A change of schema
is a new migration at the end, never an edit of one already released: databases in the
field have applied it. The states stored in the text columns are the enumerations of
:mod:`relay.queue.states`.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[str] = [
    # 1: the queue, the users and the evidence log
    """
    CREATE TABLE messages (
        qid TEXT PRIMARY KEY,
        kind TEXT NOT NULL,               -- mail | notice | certificate
        parent_qid TEXT,                  -- for notices and certificates: the mail they are about
        created REAL NOT NULL,
        expires REAL NOT NULL,
        sender TEXT NOT NULL,             -- envelope sender, '' for the null sender
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,             -- the received hash
        certified INTEGER NOT NULL,
        cert_id TEXT,
        auth_user TEXT,
        client_ip TEXT,
        client_helo TEXT,
        tls_version TEXT,
        tls_cipher TEXT,
        method TEXT NOT NULL,             -- submission | mx | generated
        summary TEXT,                     -- JSON: certifier.message summary
        state TEXT NOT NULL,              -- active | held | done
        notice_state TEXT NOT NULL,       -- none | pending | done
        cert_state TEXT NOT NULL,         -- none | pending | done
        done_at REAL
    );
    CREATE INDEX messages_state ON messages(state);
    CREATE TABLE recipients (
        id INTEGER PRIMARY KEY,
        qid TEXT NOT NULL REFERENCES messages(qid),
        address TEXT NOT NULL,
        domain TEXT NOT NULL,
        status TEXT NOT NULL,             -- queued | deferred | delivered | failed
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        last_attempt REAL,
        reply_code INTEGER,
        reply_enhanced TEXT,
        reply_text TEXT,
        remote_qid TEXT,
        mx_host TEXT,
        ip TEXT,
        port INTEGER,
        tls_version TEXT,
        tls_cipher TEXT,
        delivered_sha256 TEXT,
        note TEXT
    );
    CREATE INDEX recipients_due ON recipients(status, next_attempt);
    CREATE INDEX recipients_qid ON recipients(qid);
    CREATE TABLE users (
        address TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        created REAL NOT NULL
    );
    -- the evidence log (certifier/evidence.py: an entry, its hash, the chain)
    CREATE TABLE evidence (
        seq INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        qid TEXT NOT NULL,
        recipient TEXT,
        event TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX evidence_qid ON evidence(qid);
    """,
    # 2: leases, so that one scan never picks a recipient another attempt is working on
    """
    ALTER TABLE recipients ADD COLUMN lease_until REAL;
    """,
    # 3: open and click tracking (the addendum)
    """
    ALTER TABLE messages ADD COLUMN tracking INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE recipients ADD COLUMN addendum_at REAL;
    ALTER TABLE users ADD COLUMN tracking INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE tracking_links (
        qid TEXT NOT NULL,
        recipient_id INTEGER NOT NULL,
        link INTEGER NOT NULL,
        url TEXT NOT NULL,
        PRIMARY KEY (qid, recipient_id, link)
    );
    CREATE TABLE tracking_events (
        id INTEGER PRIMARY KEY,
        qid TEXT NOT NULL,
        recipient_id INTEGER NOT NULL,
        kind TEXT NOT NULL,
        link INTEGER NOT NULL,
        url TEXT,
        time REAL NOT NULL,
        ip TEXT NOT NULL,
        user_agent TEXT NOT NULL,
        method TEXT NOT NULL,
        automatic INTEGER NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX tracking_events_rcpt ON tracking_events(qid, recipient_id);
    """,
    # 4: MX mode (a Cc copy from the sender's provider): who the message is from and how
    # that was authenticated. For MX mail, ``sender`` is the registered From address
    # (notices and certificates go there) and ``envelope_from`` the MAIL FROM as received.
    """
    ALTER TABLE messages ADD COLUMN header_from TEXT;
    ALTER TABLE messages ADD COLUMN envelope_from TEXT;
    ALTER TABLE messages ADD COLUMN authentication TEXT;  -- JSON: DKIM, SPF, DMARC results
    """,
    # 5: RFC 3161 timestamped checkpoints of the evidence log's head
    # (certifier/checkpoints.py: the statement a token covers)
    """
    CREATE TABLE evidence_checkpoints (
        seq INTEGER PRIMARY KEY,          -- the last evidence entry the checkpoint covers
        head TEXT NOT NULL,               -- that entry's hash
        time REAL NOT NULL,               -- the gateway's clock when the checkpoint was made
        tsa_time REAL NOT NULL,           -- genTime of the token (RFC 3161 TSTInfo)
        token BLOB NOT NULL               -- DER TimeStampToken over SHA-256(statement)
    );
    """,
    # 6: per recipient, whether its copy carried tracking (and why not); per message, the
    # last open or click already reported in a certificate or addendum
    """
    ALTER TABLE recipients ADD COLUMN tracked INTEGER;  -- 1 tracked, 0 sent as received, NULL not yet
    ALTER TABLE recipients ADD COLUMN tracking_notes TEXT;  -- JSON list of sentences
    ALTER TABLE messages ADD COLUMN tracking_reported INTEGER NOT NULL DEFAULT 0;
    """,
    # 7: certified reception: mailbox owners, their forwarding tokens, the proofs of
    # receipt sent (RFC 3834: at most one per sender per interval)
    """
    CREATE TABLE reception_owners (
        owner TEXT PRIMARY KEY,
        token TEXT NOT NULL UNIQUE,
        ack_sender INTEGER NOT NULL,
        enabled INTEGER NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE reception_acks (
        owner TEXT NOT NULL,
        sender TEXT NOT NULL,
        sent REAL NOT NULL,
        PRIMARY KEY (owner, sender)
    );
    ALTER TABLE messages ADD COLUMN reception TEXT;  -- JSON: owner, forwarding chain, ARC, receipt
    ALTER TABLE messages ADD COLUMN content_key TEXT;  -- SHA-256 without the forwarders' trace
    CREATE INDEX messages_reception ON messages(kind, sender, content_key);
    """,
    # 8: what the queue manager looks for on every scan, indexed, so a scan costs what
    # is pending, not the whole history: pending notices, messages with opens or clicks
    # not yet in an addendum
    """
    CREATE INDEX messages_notice_pending ON messages(qid) WHERE notice_state = 'pending';
    ALTER TABLE messages ADD COLUMN addendum_pending INTEGER NOT NULL DEFAULT 0;
    UPDATE messages SET addendum_pending = 1 WHERE tracking = 1 AND EXISTS
        (SELECT 1 FROM tracking_events e WHERE e.qid = messages.qid
         AND e.id > messages.tracking_reported);
    CREATE INDEX messages_addendum_pending ON messages(qid) WHERE addendum_pending = 1;
    """,
    # 9: delivery status notifications for uncertified mail (RFC 3461, relay/certify/dsn.py): the
    # DSN parameters as received, and which reports went to the sender, so a restart
    # sends each once
    """
    ALTER TABLE messages ADD COLUMN dsn_ret TEXT;           -- RET=: FULL | HDRS; NULL: not given
    ALTER TABLE messages ADD COLUMN dsn_envid TEXT;         -- ENVID=, xtext-decoded
    ALTER TABLE messages ADD COLUMN reports_pending INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN delay_report_qid TEXT;  -- the "still trying" report sent
    ALTER TABLE recipients ADD COLUMN notify TEXT;          -- NOTIFY=: NEVER | SUCCESS,FAILURE,DELAY
    ALTER TABLE recipients ADD COLUMN orcpt TEXT;           -- ORCPT=, decoded: rfc822;bob@example.org
    ALTER TABLE recipients ADD COLUMN report_qid TEXT;      -- the report of its final outcome; '' none
    CREATE INDEX messages_reports_pending ON messages(qid) WHERE reports_pending = 1;
    """,
    # 10: mail for postmaster@ and abuse@ (kind 'postmaster', relay/cleanup/postmaster.py): the
    # addresses it was sent to (X-Original-To). For plain mail that left the queue: its
    # own header section, which a late DSN passed on to its sender quotes, and the late
    # reports already passed on, one per recipient and action, so a forged or repeated
    # DSN makes no second report.
    """
    ALTER TABLE messages ADD COLUMN original_to TEXT;       -- JSON list, postmaster mail only
    ALTER TABLE messages ADD COLUMN header_section BLOB;    -- plain mail, kept when it is done
    CREATE TABLE late_reports (
        recipient_id INTEGER NOT NULL,
        action TEXT NOT NULL,                               -- RFC 3464 action passed on
        dsn_qid TEXT NOT NULL,
        PRIMARY KEY (recipient_id, action)
    );
    -- Until now postmaster mail was queued as plain mail; the only plain mail the MX takes.
    UPDATE messages SET kind = 'postmaster'
        WHERE kind = 'mail' AND method = 'mx' AND certified = 0 AND state != 'done';
    """,
    # 11: who holds a recipient's lease (a process, later a node): a lease is given back
    # by its owner, and one left by an owner that died is taken over once it expires
    """
    ALTER TABLE recipients ADD COLUMN lease_owner TEXT;
    """,
    # 12: documents for their readers (README, "Your language and time zone"): each user's
    # language and time zone; how to rebuild each recipient's delivered copy from the
    # message as received (JSON, certifier/copies.py); and the public verification page's
    # record of every document issued, found by the SHA-256 of its code (never the code
    # itself, so a copy of the database does not hand out working links).
    """
    ALTER TABLE users ADD COLUMN language TEXT;             -- es, ca, it, en; NULL: [gateway] language
    ALTER TABLE users ADD COLUMN timezone TEXT;             -- IANA name; NULL: [gateway] timezone
    ALTER TABLE recipients ADD COLUMN delivered_copy TEXT;  -- JSON: prefix, edits, changes
    CREATE TABLE verifications (
        code_sha256 TEXT PRIMARY KEY,
        cert_id TEXT NOT NULL UNIQUE,
        qid TEXT NOT NULL,
        kind TEXT NOT NULL,                                 -- sending, reception, addendum
        outcome TEXT NOT NULL,                              -- delivery, non-delivery, partial, ...
        issued_at REAL NOT NULL,
        pdf_sha256 TEXT NOT NULL,
        recipients TEXT,                                    -- JSON [{address, status, time}]; NULL once erased
        erased_at REAL
    );
    """,
    # 13: evidence that outlives its keys and its subjects (docs/retention.md,
    # docs/erasure.md): the evidence log's format 2, whose hash covers a salted commitment
    # to the personal values rather than the values, so that they can be forgotten and
    # the chain still verifies (certifier/evidence.py); legal holds; every version of
    # every PDF issued (the issued one, then each renewal), so the verification page
    # knows an older copy; and the last run of each daily job.
    """
    ALTER TABLE evidence ADD COLUMN salt TEXT;              -- hex; NULL: format 1, or forgotten
    ALTER TABLE evidence ADD COLUMN commitment TEXT;        -- hex SHA-256; NULL: format 1
    ALTER TABLE evidence ADD COLUMN erased REAL;            -- when the values were forgotten
    ALTER TABLE evidence ADD COLUMN forgotten_by INTEGER;   -- the EvidenceForgotten entry declaring it
    CREATE TABLE legal_holds (
        cert_id TEXT PRIMARY KEY,
        qid TEXT NOT NULL,
        since REAL NOT NULL,
        note TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX legal_holds_qid ON legal_holds(qid);
    CREATE TABLE certificate_versions (
        pdf_sha256 TEXT PRIMARY KEY,
        cert_id TEXT NOT NULL,
        made REAL NOT NULL,
        kind TEXT NOT NULL                                  -- issued | renewed
    );
    CREATE INDEX certificate_versions_cert ON certificate_versions(cert_id);
    CREATE TABLE maintenance_runs (
        task TEXT PRIMARY KEY,
        last_run REAL NOT NULL,
        result TEXT NOT NULL
    );
    """,
    # 14: restored from a backup (relay/queue/backup.py): a recipient still to be tried in
    # the backup may have been delivered by the lost installation after it; its
    # certificate says it may have arrived twice.
    """
    ALTER TABLE recipients ADD COLUMN restored_from REAL;   -- the backup's time; NULL: not restored
    """,
    # 15: organisations, roles and credits; the web console's sessions, app passwords and
    # API tokens; webhooks (docs/accounts.md). The users already there join the
    # organisation "default" as senders: each keeps sending and seeing its own
    # certificates, and none sees another's until the operator makes one an admin.
    """
    CREATE TABLE organisations (
        code TEXT PRIMARY KEY,                  -- the operator's short name: ACME
        name TEXT NOT NULL,                     -- the legal name: Acme S.L.
        legal_id TEXT NOT NULL DEFAULT '',      -- NIF, partita IVA, VAT number
        created REAL NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        balance INTEGER NOT NULL DEFAULT 0,     -- credits: the sum of its credit_movements
        low_notice REAL                         -- admins told the balance fell below [credits] warn_below
    );
    INSERT INTO organisations (code, name, created)
        VALUES ('default', 'Default organisation', CAST(strftime('%s', 'now') AS REAL));
    ALTER TABLE users ADD COLUMN org TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'sender';  -- admin | sender | auditor
    ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN totp_secret TEXT;          -- RFC 6238 secret (base32); NULL: none
    ALTER TABLE users ADD COLUMN totp_step INTEGER;         -- the last time step accepted (used once)
    ALTER TABLE users ADD COLUMN credentials_changed REAL;  -- console sessions begun before it end
    CREATE INDEX users_org ON users(org);
    CREATE TABLE org_domains (
        domain TEXT PRIMARY KEY,                -- lower case, IDNA (A-labels)
        org TEXT NOT NULL,
        added REAL NOT NULL
    );
    ALTER TABLE messages ADD COLUMN org TEXT;   -- attributed to; NULL: none (generated, postmaster)
    ALTER TABLE messages ADD COLUMN subject TEXT;  -- decoded, to find it again; cleared with the content
    CREATE INDEX messages_org ON messages(org, created);
    CREATE TABLE credit_movements (
        id INTEGER PRIMARY KEY,
        org TEXT NOT NULL,
        time REAL NOT NULL,
        kind TEXT NOT NULL,                     -- relay.queue.states.CreditKind
        amount INTEGER NOT NULL,                -- signed: what it adds to the balance
        balance INTEGER NOT NULL,               -- the balance after it
        product TEXT,                           -- relay.queue.states.Product
        qid TEXT,                               -- the message it is about
        units INTEGER,                          -- recipients, documents, segments
        note TEXT,
        actor TEXT NOT NULL,                    -- 'operator', a user's address, 'gateway'
        evidence_seq INTEGER NOT NULL           -- its entry in the evidence log
    );
    CREATE INDEX credit_movements_org ON credit_movements(org, time);
    CREATE INDEX credit_movements_qid ON credit_movements(qid);
    CREATE TABLE credit_holds (                 -- what a message reserved, until settled
        id INTEGER PRIMARY KEY,
        qid TEXT NOT NULL,
        recipient_id INTEGER,                   -- NULL: a charge for a document
        org TEXT NOT NULL,
        product TEXT NOT NULL,
        amount INTEGER NOT NULL,
        state TEXT NOT NULL,                    -- reserved | spent | refunded
        settled REAL
    );
    CREATE INDEX credit_holds_qid ON credit_holds(qid);
    CREATE INDEX credit_holds_open ON credit_holds(state) WHERE state = 'reserved';
    CREATE TABLE web_sessions (
        id_hash TEXT PRIMARY KEY,               -- SHA-256 of the cookie: the database holds no session
        address TEXT NOT NULL,
        created REAL NOT NULL,
        last_seen REAL NOT NULL,
        csrf TEXT NOT NULL,
        stage TEXT NOT NULL,                    -- password (second factor owed) | full
        ip TEXT,
        user_agent TEXT
    );
    CREATE INDEX web_sessions_address ON web_sessions(address);
    CREATE TABLE app_passwords (
        id INTEGER PRIMARY KEY,
        address TEXT NOT NULL,
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL UNIQUE,       -- SHA-256 of a random 128-bit secret
        created REAL NOT NULL,
        last_used REAL,
        UNIQUE (address, name)
    );
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        address TEXT NOT NULL,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,        -- SHA-256 of a random 256-bit token
        created REAL NOT NULL,
        last_used REAL,
        UNIQUE (address, name)
    );
    CREATE TABLE webhooks (
        id INTEGER PRIMARY KEY,
        org TEXT NOT NULL,
        url TEXT NOT NULL,
        events TEXT NOT NULL,                   -- JSON list of event names
        secret TEXT NOT NULL,                   -- HMAC key, shown once when added
        created REAL NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE webhook_deliveries (
        id INTEGER PRIMARY KEY,
        webhook_id INTEGER NOT NULL,
        event TEXT NOT NULL,
        evidence_seq INTEGER,                   -- the entry it reports
        payload TEXT NOT NULL,                  -- the JSON body, as signed
        created REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        state TEXT NOT NULL,                    -- pending | delivered | failed
        last_status INTEGER,
        last_error TEXT,
        done_at REAL
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries(state, next_attempt);
    CREATE TABLE webhook_attempts (
        id INTEGER PRIMARY KEY,
        delivery_id INTEGER NOT NULL,
        time REAL NOT NULL,
        status INTEGER,                         -- HTTP status; NULL: no answer
        error TEXT,
        seconds REAL NOT NULL
    );
    CREATE INDEX webhook_attempts_delivery ON webhook_attempts(delivery_id);
    CREATE TABLE webhook_cursor (
        name TEXT PRIMARY KEY,
        seq INTEGER NOT NULL                    -- the evidence entries read so far
    );
    """,
    # 16: what an organisation's admins are owed or were told about its
    # credits (docs/credits.md): a movement took the balance below [credits] warn_below
    # (low_owed, until the notice is queued and low_notice set), and documents waiting
    # for credits (waiting_notice: when they were told; cleared when credits are added).
    """
    ALTER TABLE organisations ADD COLUMN low_owed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE organisations ADD COLUMN waiting_notice REAL;
    CREATE INDEX messages_waiting ON messages(cert_state) WHERE cert_state = 'waiting';
    -- a recipient's hold, found when the recipient ends (its delivery, its withdrawal)
    CREATE INDEX credit_holds_recipient ON credit_holds(recipient_id)
        WHERE recipient_id IS NOT NULL;
    """,
    # 17: when a recipient was first handed to a delivery agent. An attempt begins then:
    # a withdrawal refunds only a recipient never handed out, since an agent that died
    # after the remote's 250 leaves no attempt recorded (docs/credits.md).
    """
    ALTER TABLE recipients ADD COLUMN handed_out REAL;
    """,
    # 18: hosted content and acceptance (docs/hosted.md). Each message's
    # mode (NULL: the content is delivered), copied to its recipients so the queue manager
    # sends each one a notification of its own; per recipient the SHA-256 of its link's
    # token (never the token), the link's expiry and what became of it (handed over,
    # expired, accepted or rejected); each user's default mode.
    """
    ALTER TABLE messages ADD COLUMN hosted_mode TEXT;    -- hosted | hosted-code | accept
    ALTER TABLE recipients ADD COLUMN hosted TEXT;       -- the message's hosted_mode
    ALTER TABLE users ADD COLUMN hosted_mode TEXT;       -- the user's default; NULL: plain
    CREATE TABLE hosted_links (
        recipient_id INTEGER PRIMARY KEY,
        qid TEXT NOT NULL,
        token_sha256 TEXT NOT NULL UNIQUE,
        mode TEXT NOT NULL,                 -- hosted | hosted-code | accept
        created REAL NOT NULL,              -- when the notification was first made
        expires REAL NOT NULL,              -- [hosted] expiry_days after created
        state TEXT NOT NULL,                -- waiting | handed_over | expired
        handed_over_at REAL,
        expired_at REAL,
        code_sha256 TEXT,                   -- the one-time code mailed (hosted-code)
        code_expires REAL,
        code_tries INTEGER NOT NULL DEFAULT 0,
        shown_sha256 TEXT,                  -- SHA-256 of the last content page sent
        decision TEXT,                      -- accepted | rejected (accept)
        decided_at REAL,
        decision_detail TEXT,               -- JSON: name, comment, hashes, context
        decision_cert_id TEXT,
        decision_cert_state TEXT            -- pending | done: the sender's certificate of it
    );
    CREATE INDEX hosted_links_qid ON hosted_links(qid);
    CREATE INDEX hosted_links_due ON hosted_links(state, expires);
    CREATE INDEX hosted_links_decisions ON hosted_links(qid)
        WHERE decision_cert_state = 'pending';  -- read at every scan of the queue manager
    """,
    # 19: wrong second-factor codes counted per console session and per
    # user (docs/console.md, "The second factor"): a password-stage session ends after
    # a few; a user's codes are refused for [limits] auth_block_window after more.
    """
    ALTER TABLE web_sessions ADD COLUMN wrong_codes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN wrong_codes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN wrong_codes_since REAL;  -- the first of them in the window
    ALTER TABLE users ADD COLUMN codes_refused_until REAL;
    """,
    # 20: an admin's request to bind a domain, pending until the
    # domain publishes the token in a DNS TXT record (docs/accounts.md, "Domains").
    # Several organisations may claim one unbound domain; the first to prove it binds
    # it, and every claim of that domain ends.
    """
    CREATE TABLE org_domain_claims (
        domain TEXT NOT NULL,                   -- lower case, IDNA (A-labels)
        org TEXT NOT NULL,
        token TEXT NOT NULL,                    -- random, published as certifica-domain=<token>
        requested REAL NOT NULL,
        requested_by TEXT NOT NULL,             -- the admin's address
        PRIMARY KEY (domain, org)
    );
    CREATE INDEX org_domain_claims_org ON org_domain_claims(org);
    """,
    # 21: the acceptance pages served (docs/hosted.md, "What the page hash covers"):
    # each rendering of an ``accept`` link's content page, by the nonce its forms
    # carry, so a decision certifies the page it was posted from; the decided page's
    # exact bytes stay with the link and go into the certificate as shown-page.html.
    """
    CREATE TABLE hosted_pages (
        recipient_id INTEGER NOT NULL,
        nonce TEXT NOT NULL,                -- random, in the page's form key
        sha256 TEXT NOT NULL,               -- of the exact bytes sent
        html BLOB NOT NULL,                 -- the exact bytes sent (UTF-8 HTML)
        shown REAL NOT NULL,
        PRIMARY KEY (recipient_id, nonce)
    );
    ALTER TABLE hosted_links ADD COLUMN decision_page BLOB;  -- the page decided on
    """,
    # 22: one-time codes limited per link, not only per code (docs/hosted.md, "The
    # one-time code's limits"): codes mailed in the current day's window, and wrong
    # codes in total (a new code does not reset them), which lock the code path.
    """
    ALTER TABLE hosted_links ADD COLUMN codes_sent INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE hosted_links ADD COLUMN codes_since REAL;    -- the window's first code
    ALTER TABLE hosted_links ADD COLUMN wrong_codes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE hosted_links ADD COLUMN code_locked_until REAL;
    """,
    # 23: certified SMS (docs/sms.md). A message's SMS recipients are rows of
    # ``recipients`` like any other (address ``+34600111222@sms.<gateway domain>``);
    # what is sent to them is ``sms_messages`` (one text per message, its parts' exact
    # octets), each ``submit_sm`` of a part is an ``sms_parts`` row, each operator's
    # receipt an ``sms_receipts`` row (kept raw); organisations keep contacts, groups,
    # consents and opt-outs; every message a phone sent (MO) is kept.
    """
    CREATE TABLE sms_messages (
        qid TEXT PRIMARY KEY,
        text TEXT,                          -- exactly what is sent (opt-out line included); NULL once erased
        text_sha256 TEXT NOT NULL,          -- SHA-256 of the text in UTF-8
        alphabet TEXT NOT NULL,             -- gsm | ucs2 (relay/sms/encoding.py)
        data_coding INTEGER NOT NULL,       -- SMPP 3.4 section 5.2.19
        esm_class INTEGER NOT NULL,         -- 0x40 when the parts carry a UDH
        parts TEXT NOT NULL,                -- JSON list: each part's short_message, hex
        units INTEGER NOT NULL,             -- septets or UTF-16 code units of the text
        marketing INTEGER NOT NULL DEFAULT 0,
        sender_id TEXT NOT NULL,            -- source_addr: ACME or +34600111222
        skipped TEXT NOT NULL DEFAULT '[]'  -- JSON [{address, name, reason}]: not sent to, and why
    );
    CREATE TABLE sms_parts (
        id INTEGER PRIMARY KEY,
        recipient_id INTEGER NOT NULL,
        qid TEXT NOT NULL,
        seq INTEGER NOT NULL,               -- the part's number, from 1
        attempt INTEGER NOT NULL,           -- the recipient's attempt that sent it
        state TEXT NOT NULL,                -- submitting | accepted | deferred | failed
        started REAL NOT NULL,              -- committed before the submit_sm left
        answered REAL,                      -- the submit_sm_resp (or the end of waiting)
        message_id TEXT,                    -- the SMSC's, when accepted
        match_key TEXT,                     -- message_id as receipts are matched (relay/sms/inbound.py)
        command_status INTEGER,
        sentence TEXT,                      -- the outcome in words
        maybe_duplicate INTEGER NOT NULL DEFAULT 0,
        receipt_state TEXT,                 -- the last receipt's stat: DELIVRD, UNDELIV...
        receipt_id INTEGER                  -- that receipt
    );
    CREATE INDEX sms_parts_recipient ON sms_parts(recipient_id);
    CREATE INDEX sms_parts_qid ON sms_parts(qid);
    CREATE INDEX sms_parts_key ON sms_parts(match_key);
    CREATE TABLE sms_receipts (
        id INTEGER PRIMARY KEY,
        received REAL NOT NULL,
        message_id TEXT NOT NULL,
        match_key TEXT NOT NULL,
        part_id INTEGER,                    -- NULL until matched to a part
        state TEXT,                         -- stat (ReceiptState); NULL: unreadable
        submit_date TEXT,                   -- as the operator wrote them (YYMMDDhhmm)
        done_date TEXT,
        error TEXT,
        raw BLOB NOT NULL,                  -- the deliver_sm's short_message and TLVs as received
        fields TEXT NOT NULL                -- JSON: everything parsed
    );
    CREATE INDEX sms_receipts_key ON sms_receipts(match_key);
    CREATE INDEX sms_receipts_part ON sms_receipts(part_id);
    CREATE TABLE contacts (
        id INTEGER PRIMARY KEY,
        org TEXT NOT NULL,
        number TEXT,                        -- E.164; NULL: none known (skipped, with the reason)
        name TEXT,
        consent_marketing REAL,             -- when the opt-in was given; NULL: none recorded
        consent_source TEXT,                -- where it was given (a form, a contract)
        added REAL NOT NULL,
        added_by TEXT NOT NULL
    );
    CREATE UNIQUE INDEX contacts_number ON contacts(org, number) WHERE number IS NOT NULL;
    CREATE TABLE contact_groups (
        contact_id INTEGER NOT NULL,
        name TEXT NOT NULL,                 -- lower case
        PRIMARY KEY (contact_id, name)
    );
    CREATE INDEX contact_groups_name ON contact_groups(name);
    CREATE TABLE sms_optouts (
        org TEXT NOT NULL,
        number TEXT NOT NULL,               -- E.164
        time REAL NOT NULL,
        how TEXT NOT NULL,                  -- mo | web | operator
        detail TEXT,                        -- JSON: the keyword and the MO, the page's client
        PRIMARY KEY (org, number)
    );
    CREATE TABLE sms_inbound (
        id INTEGER PRIMARY KEY,
        received REAL NOT NULL,
        source TEXT NOT NULL,               -- the phone, E.164 when international
        destination TEXT NOT NULL,          -- the number it was sent to
        text TEXT NOT NULL,
        org TEXT,                           -- the organisation it was taken to be for
        action TEXT NOT NULL,               -- optout | none
        raw BLOB NOT NULL
    );
    ALTER TABLE organisations ADD COLUMN sms_sender TEXT;   -- sender ID; NULL: [sms] source
    ALTER TABLE organisations ADD COLUMN sms_number TEXT;   -- its own number, for replies (MO)
    ALTER TABLE users ADD COLUMN sms_sender TEXT;           -- NULL: the organisation's
    """,
    # 24: the SMS opt-out page's form tokens used (docs/sms.md): each is taken once,
    # by whichever acceptor process the POST reaches
    """
    CREATE TABLE sms_optout_forms (
        nonce TEXT PRIMARY KEY,
        expires REAL NOT NULL
    );
    CREATE INDEX sms_optout_forms_expires ON sms_optout_forms(expires);
    """,
]


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations not yet applied, each in its own transaction. Returns the version."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
    conn.commit()
    done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
    for number, script in enumerate(MIGRATIONS, start=1):
        if number in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements(script):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (number,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


def statements(script: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
