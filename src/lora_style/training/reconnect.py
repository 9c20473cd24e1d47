"""Retrying a call on the pod through a dropped connection: follow and fetch both do it."""

from __future__ import annotations

import time

from .messages import PodError, Say, Unreachable
from .settings import PodSettings


def with_reconnect(call, settings: PodSettings, say: Say, what: str):
    """Run call(); through SSH failures retry with backoff until reconnect_minutes have passed.
    A rented pod's `on_lost_contact` (runpod.check_running) is asked first, then every minute:
    it raises when RunPod reports the pod stopped, so no time goes on an address that is dead."""
    limit = 60 * float(settings.reconnect_minutes)
    ask = settings.on_lost_contact
    start, delay, asked = time.monotonic(), 1.0, None
    while True:
        try:
            return call()
        except Unreachable as exc:
            waited = time.monotonic() - start
            if ask and (asked is None or time.monotonic() - asked >= 60):
                asked = time.monotonic()
                ask()
            if waited >= limit:
                raise PodError(
                    f"{exc}\nno contact with the pod for {waited / 60:.0f} min while {what}; "
                    "if the pod is up, its training goes on: run snakemake again to re-attach"
                ) from None
            say(f"lost contact with the pod while {what} ({exc.short}); retrying in {delay:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 60.0)
