"""The throttles' windows: a method's failures count over a day, a source's over an hour, texts to
a number over an hour and a day. The challenge flow throttles over them, a decision shows a
method paused by its failures as throttled over the same day, and service/retention.py keeps
what they count for longer."""

from __future__ import annotations

from datetime import timedelta

METHOD_FAILURES_WINDOW = timedelta(hours=24)
SOURCE_FAILURES_WINDOW = timedelta(hours=1)
SMS_SENDS_WINDOWS = (timedelta(hours=1), timedelta(hours=24))
