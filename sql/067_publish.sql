-- sms.publish(tenant, fsa, from_version, to_version, notice): puts the versions a transaction made
-- of one state into the tenant's feed (sms.feed; its position comes at commit, sms.place_in_feed)
-- and sends `notice` on channel sms_changes, delivered at commit too, unless the setting
-- sms.notify is 'off' (NOTIFY only wakes readers; the feed is what they read).
CREATE OR REPLACE FUNCTION sms.publish(p_tenant_id text, p_fsa_id text, p_from_version bigint,
                                       p_to_version bigint, p_notice jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sms.feed (tenant_id, fsa_id, to_version, from_version)
    VALUES (p_tenant_id, p_fsa_id, p_to_version, p_from_version);
    IF coalesce(current_setting('sms.notify', true), '') <> 'off' THEN
        PERFORM pg_notify('sms_changes', p_notice::text);
    END IF;
END;
$$;

-- sms.place_in_feed(): gives a transaction's new row of sms.feed the tenant's next position, when
-- the transaction commits (a deferred constraint trigger), taking the tenant's clock row for the
-- rest of the commit (sql/013_feed.sql says why).
CREATE OR REPLACE FUNCTION sms.place_in_feed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_position bigint;
BEGIN
    INSERT INTO sms.feed_clocks AS c (tenant_id, position) VALUES (NEW.tenant_id, 1)
    ON CONFLICT (tenant_id) DO UPDATE SET position = c.position + 1
    RETURNING c.position INTO v_position;
    UPDATE sms.feed SET position = v_position
     WHERE tenant_id = NEW.tenant_id AND fsa_id = NEW.fsa_id AND to_version = NEW.to_version;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER feed_place
    AFTER INSERT ON sms.feed
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION sms.place_in_feed();
