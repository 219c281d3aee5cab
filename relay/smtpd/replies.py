"""Every SMTP reply the gateway sends, named once (RFC 5321 §4.2, RFC 3463 codes).

Code and tests use these constants; a reader finds every refusal here. The texts
are sentences a user understands when their mail client shows them; no reply ever
carries an exception's text.

:func:`with_enhanced_code` adds an RFC 3463 enhanced status code to the replies
that aiosmtpd words without one, so that every reply the client sees has one.
"""

from __future__ import annotations

import re

# -- acceptance -------------------------------------------------------------------
OK = "250 2.0.0 OK"
SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
CERTIFICATION_OK = "250 2.1.5 Certification requested: this message will be certified"
QUEUED = "250 2.0.0 Message accepted for delivery, queued as {qid}"
QUEUED_CERTIFIED = "250 2.0.0 Message accepted for certified delivery, queued as {qid}"
AUTH_OK = "235 2.7.0 Authentication successful"
READY_FOR_TLS = "220 2.0.0 Ready to start TLS"

# -- temporary failures -----------------------------------------------------------
STORE_FAILED = (
    "451 4.3.0 The message could not be stored safely; nothing was accepted, please try again later"
)
DISK_FULL = "452 4.3.1 The gateway is out of storage; nothing was accepted, please try again later"
# [limits] min_free (Postfix's queue_minfree): refused at MAIL, before any data is sent.
LOW_ON_SPACE = "452 4.3.1 The gateway is short of storage space just now; please try again later"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients; send the rest in another message"
INTERNAL_ERROR = (
    "451 4.3.0 The gateway met an internal error; nothing was accepted, please try again later"
)
SHUTTING_DOWN = "421 4.3.2 The gateway is shutting down; please try again later"
TOO_MANY_AUTH_FAILURES = "421 4.7.0 Too many failed authentication attempts; closing connection"
AUTH_BLOCKED = (
    "421 4.7.0 Too many failed authentication attempts from your address; "
    "try again later; closing connection"
)
TIMEOUT = "421 4.4.2 Timeout exceeded; closing connection"

# -- permanent refusals -----------------------------------------------------------
AUTH_REQUIRED = "530 5.7.0 Authentication required: log in before sending"
TLS_REQUIRED = "530 5.7.0 Must issue a STARTTLS command first"
AUTH_FAILED = "535 5.7.8 Authentication failed: wrong user name or password"
SENDER_NOT_OWNED = (
    "550 5.7.1 You may only send as your own address ({user}); "
    "the sender address {sender} is not yours"
)
FROM_NOT_OWNED = (
    "550 5.7.1 The From header must name exactly one address, your own ({user}); "
    "this message's From does not"
)
NULL_SENDER = "550 5.7.1 An empty sender address is not accepted here"
RELAY_UNCERTIFIED_OFF = "550 5.7.1 This gateway only relays certified mail: add {address} in Cc"
NO_OTHER_RECIPIENTS = (
    "554 5.5.1 The certification address was the only recipient: "
    "add the people the message is for in To or Cc"
)
BAD_ADDRESS = "501 5.1.3 That address is not valid: {why}"
BAD_CHARACTERS = "501 5.5.4 The command contains a control character (CR or NUL)"
# Postfix's smtpd_forbid_bare_newline: the connection is closed after this reply.
BARE_LINE_FEED = (
    "521 5.5.2 A command line ended with a bare LF; lines must end with CRLF "
    "(RFC 5321 2.3.8); closing connection"
)
NOT_UTF8 = "500 5.5.2 The command is not valid UTF-8 (RFC 6531)"
NUL_IN_DATA = (
    "550 5.6.0 The message contains a NUL byte, which mail may not carry "
    "(RFC 2045 2.7-2.8); it was not accepted"
)
TLS_ALREADY_ACTIVE = "503 5.5.1 TLS is already active"
TLS_FAILED = "454 4.7.0 The TLS handshake failed"
SIZE_EXCEEDED = "552 5.3.4 The message is larger than the {limit}-byte limit of this gateway"
HEADER_TOO_LARGE = "552 5.3.4 The message header is larger than the {limit}-byte limit"
LINE_TOO_LONG = "500 5.5.2 A line of the message is longer than 1000 octets (RFC 5321 4.5.3.1.6)"
BARE_LINE_ENDING = (
    "550 5.6.0 The message contains a bare CR or LF; lines must end with CRLF (RFC 5321 2.3.8)"
)
EIGHT_BIT_HEADERS = (
    "550 5.6.7 The message header contains non-ASCII bytes but SMTPUTF8 was not "
    "requested (RFC 6531)"
)
NOT_A_MESSAGE = "550 5.6.0 The data is not an e-mail message: no header section was found"

# -- the gateway's own addresses (relay/addresses.py), on both listeners ------------
NO_SUCH_USER = "550 5.1.1 No such user here"
NO_SUCH_ADDRESS = (
    "550 5.1.1 There is no such address at {domain}; this gateway receives mail only at {addresses}"
)
CERTIFICATION_TAG_NONE = "550 5.1.1 The certification address takes no +tag; write it as {address}"
CERTIFICATION_TAG_UNKNOWN = (
    "550 5.1.1 That +tag of the certification address does not exist; the valid forms are {valid}"
)
CERTIFICATION_NEAR_MISS = (
    "550 5.1.1 There is no such address here; did you mean the certification address {address}?"
)

# -- the MX listener ---------------------------------------------------------------
RELAY_DENIED = "550 5.7.1 Relaying denied: this server only accepts mail for {domain}"
BOUNCE_RECORDED = "250 2.0.0 Bounce recorded"
NOT_A_BOUNCE = "250 2.0.0 Message received; this address only reads delivery reports"
FROM_NOT_ONE_SENDER = (
    "550 5.7.1 The From header must name exactly one sender, written plainly; "
    "this message's From does not, so it cannot be certified"
)
SENDER_NOT_REGISTERED = (
    "550 5.7.1 The sender {sender} is not registered with this gateway; "
    "ask its operator to add the address before asking for certification"
)
NOT_AUTHENTICATED = "550 5.7.1 {why}"
AUTHENTICATION_TEMPORARY = (
    "451 4.7.0 The sender's authentication records (DKIM, SPF, DMARC) could not be read "
    "from the DNS just now; please try again later"
)
RECIPIENTS_UNREADABLE = (
    "550 5.6.0 The To or Cc header could not be read strictly; the gateway delivers the "
    "certified copy only to addresses it can read without guessing"
)
HEADER_RECIPIENT_INVALID = "550 5.1.3 The recipient {address} in To or Cc is not valid: {why}"
HEADER_RECIPIENTS_TOO_MANY = (
    "552 5.5.3 To and Cc name more than {limit} recipients; this gateway certifies a "
    "message for at most {limit}"
)
RECEPTION_CERTIFIED = "250 2.0.0 Message received and its arrival certified, {what}"
BOUNCE_NOT_RECORDED = (
    "451 4.3.0 The delivery report could not be recorded; nothing was accepted, "
    "please try again later"
)

# -- the DSN extension's parameters (RFC 3461, relay/certify/dsn.py), on the submission ports ---
BAD_DSN_PARAMETER = "501 5.5.4 A delivery notification parameter is not valid (RFC 3461): {why}"


# -- credits (relay/queue/credits.py, docs/credits.md): a certified message costs more ---
# -- than its organisation's balance; nothing was accepted, nothing is sent uncertified ---
CREDITS_SHORT = (
    "550 5.7.1 Not enough credits to certify this message: your organisation's balance "
    "is {balance} and it needs {needed}, so nothing was sent; {top_up}."
)
CREDITS_SHORT_DEFER = (
    "452 4.7.1 Not enough credits to certify this message yet: your organisation's "
    "balance is {balance} and it needs {needed}, so nothing was accepted; it can be sent "
    "again once credits are added ({top_up})."
)
# A message with SMS recipients: its SMS cost credits whether it is certified or not.
CREDITS_SHORT_SMS = (
    "550 5.7.1 Not enough credits to send this message's SMS: your organisation's balance "
    "is {balance} and it needs {needed}, so nothing was sent; {top_up}."
)
CREDITS_SHORT_SMS_DEFER = (
    "452 4.7.1 Not enough credits to send this message's SMS yet: your organisation's "
    "balance is {balance} and it needs {needed}, so nothing was accepted; it can be sent "
    "again once credits are added ({top_up})."
)
CREDITS_TOP_UP = "to top up, contact {contact}"
CREDITS_TOP_UP_OPERATOR = "to top up, ask the operator of this gateway"

# aiosmtpd words some replies without an RFC 3463 code; these are the codes to add.
_ENHANCED_FOR = {
    "214": "2.0.0",
    "221": "2.0.0",
    "252": "2.0.0",
    "250": "2.0.0",
    "421": "4.7.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.7.0",
    "555": "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


def with_enhanced_code(reply: str) -> str:
    """Return ``reply`` with an enhanced status code, adding one when it lacks it.

    Greetings (220), EHLO lines, 354 and AUTH challenges (334) carry none by RFC 2034.
    """
    if len(reply) < 4 or _HAS_ENHANCED.match(reply):
        return reply
    code, sep, text = reply[:3], reply[3], reply[4:]
    enhanced = _ENHANCED_FOR.get(code)
    if enhanced is None or sep != " ":
        return reply
    text = text.removeprefix("Error: ")
    return f"{code} {enhanced} {text}"


# -- organisations and roles (relay/roles.py, docs/accounts.md) -----------------------
ROLE_DOES_NOT_SEND = (
    "550 5.7.1 This account's role ({role}) reads certificates and does not send mail"
)
ACCOUNT_CANNOT_SEND = "550 5.7.1 This account may not send mail now; ask the gateway's operator"
# MX mode: the From is a registered user (or of a bound domain) who may not send.
SENDER_MAY_NOT_SEND = (
    "550 5.7.1 The sender {sender} may not send certified mail through this gateway "
    "(its account does not send or is disabled); ask its operator"
)

# Hosted content (docs/hosted.md) is asked for through submission only: on the MX port the
# sender's own provider has already delivered the content to the recipients.
HOSTED_MODE_UNKNOWN = (
    "550 5.6.0 X-Certifica-Mode: {value} names no mode; write hosted, hosted-code, accept "
    "or plain, or leave the field out"
)
HOSTED_ON_MX = (
    "550 5.7.1 Hosted content and acceptance are asked for when sending through the "
    "gateway (submission, port 587 or 465), not by a copy to {address}; send the message "
    "through the gateway with that address in Cc"
)

# -- certified SMS (docs/sms.md, "Sending"): mail to <number>@sms.<gateway domain> -------
SMS_DISABLED = "550 5.1.2 This gateway does not send SMS: addresses at {domain} cannot receive mail"
SMS_ROLE_REFUSED = (
    "550 5.7.1 Your role ({role}) may not send SMS on this gateway; the roles that may are: {roles}"
)
SMS_NUMBER_REFUSED = "550 5.1.3 {sentence}"
SMS_NO_SUCH_GROUP = (
    "550 5.1.1 Your organisation has no contacts in the group {group}; its "
    "administrator adds them (certifica contacts add or import, with --group {group})"
)
SMS_KIND_UNKNOWN = (
    "550 5.6.0 X-Certifica-SMS: {value} names no kind of SMS; write marketing or "
    "transactional, or leave the field out (transactional)"
)
# [limits] recipients counts each number a group expands to (RFC 5321 4.5.3.1.8 allows
# a server its own limit); a group alone over it is refused at RCPT, the whole at DATA.
SMS_GROUP_TOO_BIG = (
    "552 5.5.3 The group {group} has {count} contacts with a number, more than this "
    "gateway's limit of {limit} recipients per message: split the group or the sending"
)
SMS_TOO_MANY_RECIPIENTS = (
    "552 5.5.3 With the group{s} {groups}, this message goes to {count} numbers{others}, "
    "more than this gateway's limit of {limit} recipients per message: split the sending"
)
SMS_NO_TEXT = "550 5.6.0 {sentence}"
SMS_TOO_LONG = "552 5.3.4 {sentence}"
SMS_NOBODY = (
    "550 5.7.1 Nothing was sent: every SMS recipient was skipped ({why}), and the "
    "message has no e-mail recipient"
)
