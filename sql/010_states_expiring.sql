-- Index for the TTL sweep (sms.expire_states): the states that have a TTL, by their last delta.
CREATE INDEX states_expiring ON sms.states (updated_at) WHERE expires_after IS NOT NULL;
