"""SMTP in (Postfix's smtpd): the protocol, the listeners' decisions, who may send.

``protocol`` is aiosmtpd's server, hardened (RFC 5321); ``submission`` decides on ports
587 and 465 (RFC 6409), ``mx`` on port 25; ``authn`` checks that MX mail is really from
the registered user it claims (DKIM, SPF, DMARC); ``replies`` names every reply once;
``users`` holds the submission passwords; ``sink`` is the local mailbox for trying the
gateway on one machine. This stage decides and answers; it never delivers or renders
(ARCHITECTURE.md §2).
"""
