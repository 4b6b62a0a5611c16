"""Every Redis key voicealert owns, in one place. All start with the configured prefix."""

from __future__ import annotations

from dataclasses import dataclass


def wake_channel(queue: str) -> str:
    """The wake-up channel of an arq queue (``Keys.queue_wake``)."""
    return f"{queue}:wake"


@dataclass(frozen=True)
class Keys:
    prefix: str = "voicealert:"

    @property
    def events(self) -> str:
        """The alert event stream producers XADD to (docs/contracts.md#the-stream)."""
        return f"{self.prefix}events"

    @property
    def consumer_group(self) -> str:
        """Consumer group name on the events stream (a group name, not a key)."""
        return "voicealert-workers"

    @property
    def queue(self) -> str:
        """arq's job queue (sorted set); arq derives its job keys from arq's own prefixes."""
        return f"{self.prefix}queue"

    @property
    def queue_wake(self) -> str:
        """Pub/sub channel (not a key) on which every enqueue announces when its earliest job
        starts, so that job loops sleeping until their next poll wake (worker/wakeup.py)."""
        return wake_channel(self.queue)

    def health_check(self, consumer: str) -> str:
        """One health key per replica (arq's default is shared by every replica), holding the
        replica's latest heartbeat (``worker.health.ReplicaBeat``, JSON) and expiring with it."""
        return f"{self.prefix}health:{consumer}"

    @property
    def replicas(self) -> str:
        """Sorted set of consumer names scored by their latest heartbeat (epoch ms): how
        ``status`` and ``worker --check`` find health keys without scanning the keyspace, and
        how a replica that died (its health key expired) is still named."""
        return f"{self.prefix}replicas"

    def dedup_lock(self, tenant: str, alert_id: str) -> str:
        # Length-prefix the tenant so "a:b"+"c" and "a"+"b:c" cannot collide.
        return f"{self.prefix}dedup:{len(tenant)}:{tenant}:{alert_id}"

    @property
    def sweeper_lock(self) -> str:
        """Held by the replica sweeping this interval (worker/sweeper.py): one at a time."""
        return f"{self.prefix}sweeper:lock"

    @property
    def rate_limit(self) -> str:
        """The global outbound-call schedule (GCRA theoretical arrival time)."""
        return f"{self.prefix}ratelimit:calls"

    @property
    def dial_window(self) -> str:
        """The call rate's dial gate: a sorted set of the latest dials (worker/ratelimit.py),
        each scored by the Redis time it was admitted at, in epoch microseconds."""
        return f"{self.prefix}ratelimit:dials"

    def api_requests(self, key_id: str) -> str:
        """One HTTP API token's request-rate schedule (GCRA theoretical arrival time)."""
        return f"{self.prefix}ratelimit:api:{key_id}"

    def simulated_call(self, sid: str) -> str:
        """State of a call placed by the simulated provider (shared across replicas)."""
        return f"{self.prefix}simulated:call:{sid}"

    def simulated_calls_to(self, phone: str) -> str:
        return f"{self.prefix}simulated:to:{phone}"
