"""Delivery out (Postfix's smtp): the delivery agent and what it uses.

``agent`` runs one delivery job: the spool file, the tracked copy, the headers added on
the way out (``outbound``), DKIM (``dkim_keys``), the route (``routing``) and the SMTP
client (``client``), then records the outcome (ARCHITECTURE.md §3, step 4).
"""
