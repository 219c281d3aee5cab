"""The documents the gateway writes: notices, certificates, reports and addenda.

``documents`` makes each one (a certificate worker's job), ``evidence_record`` gathers
what a certificate states, ``notices`` and ``dsn`` write the mails (RFC 5322, RFC 3464),
``checkpoints`` timestamps the evidence log (ARCHITECTURE.md §3, step 5).
"""
