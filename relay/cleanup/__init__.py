"""Taking ownership of a message (Postfix's cleanup): spool file, row, then 250.

``intake.accept`` is the one way mail enters the queue from SMTP; the certified Cc copy,
certified reception, postmaster@ and late bounces are intakes that end in it
(ARCHITECTURE.md §3, step 2).
"""
