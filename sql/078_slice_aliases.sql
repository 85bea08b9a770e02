-- sms.slice_aliases: a state's own aliases for slice specs (`todo:*` reading `tasks`), beside or
-- over sms.default_aliases. Aliases are configuration, not content: setting one is not a delta.
-- Names are stored folded to lower case, as specs match them case-insensitively.
CREATE TABLE sms.slice_aliases (
    tenant_id  text             NOT NULL,
    fsa_id     text             NOT NULL,
    alias      text COLLATE "C" NOT NULL,
    collection text COLLATE "C" NOT NULL,
    created_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, fsa_id, alias)
);
