-- sms.policies: the rules a state's values must keep (DESIGN §10), evaluated by the merge on the
-- values a delta produces (sms.policy_targets, sms.policy_violations). fsa_id '' holds the
-- tenant's defaults; a state's own rules on a path replace the defaults on that path. `keys` is
-- the rule's path glob split into keys; `anchor` its literal leading keys as a dotted path ('' when
-- it starts with a glob). The primary key leads with the anchor, so that the rules that can concern
-- a delta's path are found by a few searches of it, however many rules there are.
CREATE TABLE sms.policies (
    tenant_id text             NOT NULL,
    fsa_id    text             NOT NULL,   -- '' = the tenant's defaults
    rule_no   integer          NOT NULL,   -- its place in the rule set
    path      text             NOT NULL,   -- as given: tasks.*.status, resources.inventory.*, **
    keys      text[]           NOT NULL,
    anchor    text COLLATE "C" NOT NULL,
    rule      jsonb            NOT NULL,   -- the normalised rule (sms.check_rule)
    PRIMARY KEY (tenant_id, fsa_id, anchor, rule_no)
);
