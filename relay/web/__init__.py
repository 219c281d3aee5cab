"""The tracking endpoint wired to the queue: opens and clicks become evidence."""
