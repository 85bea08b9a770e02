"""The TTL sweep (every SMS_EXPIRY_SWEEP_SECONDS, app.db.periodic): the states that have gone their
`expires_after` without a delta are purged (recorded in sms.erasures with actor "ttl") until none is
left: a batch of them is listed (sms.expired_states, every tenant's), then each is expired by a call
of its own (sms.expire_state, which checks it again under the state's lock), in a transaction of its
own. On Citus that call is delegated to the tenant's node, where the state's writers take its lock;
one sweep statement on the coordinator would take the locks there, and is refused. Each process of
the service sweeps; sweeps that meet take turns on each state's lock, and a state one of them purged
is not there for the other."""

from __future__ import annotations

import logging

from app.db.queries import Database

log = logging.getLogger(__name__)

SWEEP_BATCH = 20  # states listed at a time


async def sweep_expired(db: Database) -> int:
    """One sweep: purges every state past its TTL; how many there were."""
    purged = 0
    while True:
        expired = await db.expired_states(SWEEP_BATCH)
        done = 0
        for tenant_id, fsa_id in expired:
            record = await db.expire_state(tenant_id, fsa_id)
            if record is not None:  # else a delta came meanwhile, or another sweep was first
                log.info("expired %s/%s at version %s", tenant_id, fsa_id, record["last_version"])
                done += 1
        purged += done
        # a full batch none of which expired (each written meanwhile, or a node's clock behind): next time
        if len(expired) < SWEEP_BATCH or done == 0:
            return purged
