"""The queue: the spool files, the database, and the scheduler (Postfix's qmgr).

The only package with SQL (``store`` and the modules it is made of); ``states`` names
every state a message or recipient can be in; ``manager`` decides what is due and hands
it out as the jobs of ``jobs`` (ARCHITECTURE.md §1 and §5).
"""
