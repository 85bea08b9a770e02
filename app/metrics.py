"""The service's Prometheus metrics (GET /metrics), in the process's default registry.

Every layer counts here (the HTTP layer, the database layer, the feed), so this module imports
nothing of the service. Labels never carry a tenant, a state, a key or a raw path: their values
come from small fixed sets (route templates, status codes, reasons), so the number of series stays
bounded and a reader of /metrics learns nothing about any tenant.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # no `_created` series beside every counter and histogram: half the series, no use here

REQUEST_DURATION = Histogram(
    "sms_http_request_duration_seconds",
    "HTTP requests by method, route template and status: their count (_count) and how long they took "
    "(an SSE stream's duration is how long it stayed open)",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REQUESTS_IN_FLIGHT = Gauge("sms_http_requests_in_flight", "HTTP requests being served (SSE streams included)")

DELTAS_APPLIED = Counter("sms_deltas_applied_total", "Deltas applied (each write of a batch counts, replaces too)")
DELTAS_REFUSED = Counter(
    "sms_deltas_refused_total",
    "Deltas refused, by reason: conflict (409), policy (a policy's 422), validation (any other 4xx), "
    "aborted (another write of its all-or-nothing batch failed), unavailable (503), other",
    ["reason"],
)
GROUP_COMMIT_BATCH = Histogram(
    "sms_group_commit_batch_size",
    "Deltas per transaction under group commit (1: a delta that found its state idle, or went alone)",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
SLICE_CACHE = Counter(
    "sms_slice_summary_cache_total", "Slice reads by whether their summary came from the cache", ["result"]
)

FEED_SUBSCRIBERS = Gauge("sms_feed_subscribers", "Change-feed subscriptions open in this process (SSE streams)")
FEED_READERS = Gauge("sms_feed_readers", "States and tenants whose log this process reads for its subscribers")
FEED_LAG = Histogram(
    "sms_feed_lag_seconds",
    "From a change's transaction start (the database's clock) until this process's feed read it",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
LISTENER_RECONNECTS = Counter("sms_listener_reconnects_total", "Times the LISTEN connection was lost and reopened")
LISTENER_CONNECTED = Gauge("sms_listener_connected", "1 while the LISTEN connection is up, else 0")

POOL_SIZE = Gauge("sms_db_pool_size", "Connections the pool holds open")
POOL_IN_USE = Gauge("sms_db_pool_in_use", "Pool connections serving a query now")
POOL_MAX = Gauge("sms_db_pool_max_size", "The most connections the pool may open (SMS_POOL_MAX_SIZE)")

REFUSAL_REASONS = ("conflict", "policy", "validation", "aborted", "unavailable", "other")
for _reason in REFUSAL_REASONS:  # every reason exported from the start, at 0: rate() needs the series
    DELTAS_REFUSED.labels(_reason)
SLICE_HITS, SLICE_MISSES = SLICE_CACHE.labels("hit"), SLICE_CACHE.labels("miss")  # both exported from the start


def refusal_reason(status: int, slug: str) -> str:
    """Why a delta was refused, as a label value, from its problem's status and type."""
    if slug == "policy-violation":
        return "policy"
    if slug == "batch-aborted":
        return "aborted"
    if status == 409:
        return "conflict"
    if status == 503:
        return "unavailable"
    if 400 <= status < 500:
        return "validation"
    return "other"
