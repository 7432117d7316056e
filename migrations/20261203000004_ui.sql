-- The operator web UI's sign-in sessions (SPEC.md §9).
--
-- In Postgres rather than in the API's memory so that a session outlives a rolling restart
-- (a restart is a non-event, for operators too) and is valid on every API replica behind
-- the Service, without sticky sessions or a shared signing key.
CREATE TABLE ui_sessions (
    -- SHA-256 of the cookie's value: reading this table does not hand out live sessions.
    id_hash      bytea       PRIMARY KEY,
    -- SHA-256 of the token signed in with. The caller's name and scope are looked up from
    -- the configured tokens on every request, so a token removed from SLUICE_API_TOKENS
    -- ends its sessions at the next rollout.
    token_digest bytea       NOT NULL,
    -- The synchronizer token every form of this session carries.
    csrf         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Absolute expiry (SLUICE_UI_SESSION_TTL after sign-in).
    expires_at   timestamptz NOT NULL
);
CREATE INDEX ui_sessions_expires_at_idx ON ui_sessions (expires_at);
