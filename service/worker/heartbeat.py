"""A worker's heartbeat thread: liveness in ``P:workers``, time estimates for admission, queue gauges, and the
removal of dead consumers from the group.

Every ``heartbeat_s`` (a failed beat is retried after 0.2 s): publish the per-op item/batch time estimates and
then the heartbeat, in one pipeline and in that order (admission must never see a live worker without an
estimate; a Redis restarted without persistence has lost both); refresh the cluster-wide stream gauges
(``evotok_stream_*``) from XINFO, but only while this worker holds the publisher lease (``P:gauges``, a key
with a TTL of the liveness window: one worker publishes them, so N workers do not show N times the queue). Every
beat also looks for dead consumers: a consumer of the group that owns no pending entries, has been idle longer
than ``max(claim_idle, liveness window)`` and has no live heartbeat is removed (``XGROUP DELCONSUMER``), so a
SIGKILLed worker's name does not stay in the group forever. A live worker whose name was removed by mistake
is recreated by its next read, with nothing lost (it owned nothing).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from evotok.service import metrics
from evotok.service.core import OPS
from evotok.service.redis_protocol import GROUP, HEARTBEAT_LUA, Keys
from evotok.service.step import RunTimes

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, client: redis.Redis, keys: Keys, name: str, period_s: float, window_ms: int,
                 claim_idle_ms: int, times: RunTimes, caps: dict[str, int]) -> None:
        self.redis, self.keys, self.name = client, keys, name
        self.period_s, self.window_ms = period_s, window_ms
        self.dead_after_ms = max(claim_idle_ms, window_ms)
        self.times, self.caps = times, caps
        self.batches: Callable[[], int] = lambda: 0  # set by the process main: the consumer's batch count
        self.enabled: Callable[[], bool] = lambda: True  # beat only while Redis is reachable and not stopping
        self._script = client.register_script(HEARTBEAT_LUA)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            wait = self.period_s
            if self.enabled():
                try:
                    self.beat()
                    self.refresh_gauges()
                    self.remove_dead_consumers()
                except (redis.RedisError, OSError) as exc:
                    log.debug("heartbeat failed: %s", exc)
                    wait = min(self.period_s, 0.2)
            self._stop.wait(max(0.0, wait - (time.monotonic() - t0)))

    def stats_into(self, pipe: Any) -> None:
        for op, item_s in list(self.times.item_s.items()):
            pipe.hset(self.keys.stats(op), mapping={
                "item_ms": f"{1000 * item_s:.3f}", "batch_ms": f"{1000 * self.times.batch_s.get(op, 0.0):.3f}",
                "cap": self.caps.get(op, 0)})

    def publish_stats(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self.stats_into(pipe)
        pipe.execute()

    def beat(self) -> None:
        """Estimates, then the heartbeat, in one pipeline. Raises on a Redis error."""
        info: list[Any] = ["pid", os.getpid(), "host", socket.gethostname(), "batches", self.batches()]
        for op, cap in self.caps.items():  # this worker's effective caps: the API's /info reports them
            info += [f"cap:{op}", cap]
        pipe = self.redis.pipeline(transaction=False)
        self.stats_into(pipe)
        self._script(keys=[self.keys.workers, self.keys.worker_info(self.name)],
                     args=[self.name, self.window_ms, 100 * self.window_ms, *info], client=pipe)
        try:
            res = pipe.execute()
        except (redis.RedisError, OSError):
            metrics.HEARTBEATS.labels("error").inc()
            raise
        metrics.HEARTBEATS.labels("ok").inc()
        metrics.LIVE_WORKERS.set(int(res[-1]))

    def remove_dead_consumers(self) -> int:
        """XGROUP DELCONSUMER every consumer that is idle, owns no pending entry and has no live heartbeat."""
        sec, usec = self.redis.time()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        live = {n.decode() if isinstance(n, bytes) else str(n)
                for n in self.redis.zrangebyscore(self.keys.workers, now_ms - self.window_ms, "+inf")}
        removed = 0
        for op in OPS:
            stream = self.keys.work(op)
            for c in self.redis.xinfo_consumers(stream, GROUP):
                name = c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"])
                if name == self.name or name in live or int(c.get("pending", 0)) > 0:
                    continue
                if int(c.get("idle", 0)) < self.dead_after_ms:
                    continue
                # DELCONSUMER drops the consumer's pending entries too: re-check under the same round trip
                pending = self.redis.xpending_range(stream, GROUP, "-", "+", 1, consumername=name)
                if not pending:
                    self.redis.xgroup_delconsumer(stream, GROUP, name)
                    removed += 1
                    metrics.CONSUMERS_REMOVED.inc()
                    log.info("removed dead consumer %s from %s (idle %d ms, nothing pending)", name, stream,
                             int(c.get("idle", 0)))
        return removed

    def holds_gauge_lease(self) -> bool:
        """Take or keep the lease of the cluster-wide gauges (first come; lapses with its holder's heartbeats)."""
        key = self.keys.gauge_lease
        if self.redis.set(key, self.name, nx=True, px=self.window_ms):
            return True
        holder = self.redis.get(key)
        if holder is not None and (holder.decode() if isinstance(holder, bytes) else str(holder)) == self.name:
            self.redis.pexpire(key, self.window_ms)
            return True
        return False

    def refresh_gauges(self) -> None:
        if not self.holds_gauge_lease():
            for gauge in (metrics.STREAM_ENTRIES, metrics.STREAM_OLDEST_AGE, metrics.STREAM_BYTES):
                gauge.clear()
            return
        pipe = self.redis.pipeline(transaction=False)
        for op in OPS:
            pipe.xinfo_groups(self.keys.work(op))
            pipe.xrange(self.keys.work(op), count=1)
            pipe.get(self.keys.bytes(op))
        pipe.time()
        res = pipe.execute(raise_on_error=False)
        sec, usec = res[-1]
        now_ms = int(sec) * 1000 + int(usec) // 1000
        for k, op in enumerate(OPS):
            groups, first, used = res[3 * k: 3 * k + 3]
            if isinstance(groups, list):
                for g in groups:
                    if g.get("name") in (GROUP, GROUP.encode()):
                        metrics.STREAM_ENTRIES.labels(op, "lag").set(int(g.get("lag") or 0))
                        metrics.STREAM_ENTRIES.labels(op, "pending").set(int(g.get("pending") or 0))
            age = 0.0
            if isinstance(first, list) and first:
                eid = first[0][0]
                eid = eid.decode() if isinstance(eid, bytes) else str(eid)
                age = max(0.0, (now_ms - int(eid.split("-")[0])) / 1000)
            metrics.STREAM_OLDEST_AGE.labels(op).set(age)
            metrics.STREAM_BYTES.labels(op).set(int(used) if isinstance(used, (bytes, str, int)) and used else 0)
