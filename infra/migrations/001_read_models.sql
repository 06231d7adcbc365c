-- Read models folded from QG_EVENTS. Everything here can be rebuilt by a replay.

CREATE TABLE checkpoints (
    projection text PRIMARY KEY,
    last_seq   bigint NOT NULL
);

CREATE TABLE jobs (
    job_id          text PRIMARY KEY,
    org_id          text NOT NULL,
    app_version_id  text NOT NULL,
    test_path       text NOT NULL,
    target          text NOT NULL,
    priority        smallint NOT NULL,
    batch_id        text NOT NULL,
    retries         smallint NOT NULL,
    timeout_s       double precision NOT NULL,
    idempotency_key text,
    submitted_at    timestamptz NOT NULL,
    status          text NOT NULL,
    attempt         smallint NOT NULL,
    test_failures   smallint NOT NULL,
    agent_id        text,
    assigned_at     timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    duration_s      double precision,
    reason          text,
    log_ref         text,
    version         bigint NOT NULL,
    submit_seq      bigint NOT NULL
);
CREATE INDEX jobs_by_batch_status ON jobs (batch_id, status);
CREATE INDEX jobs_by_submit_seq ON jobs (submit_seq);
CREATE INDEX jobs_by_status ON jobs (status, submit_seq);
CREATE UNIQUE INDEX jobs_by_idempotency_key ON jobs (org_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE batches (
    batch_id        text PRIMARY KEY,
    org_id          text NOT NULL,
    app_version_id  text NOT NULL,
    target          text NOT NULL,
    created_at      timestamptz NOT NULL,
    last_job_at     timestamptz NOT NULL,
    installs        integer NOT NULL DEFAULT 0,
    tickets_spent   integer NOT NULL DEFAULT 0,
    last_agent_id   text,
    last_install_at timestamptz
);

CREATE TABLE agents (
    agent_id      text PRIMARY KEY,
    targets       text[] NOT NULL,
    runner        text NOT NULL,
    hostname      text NOT NULL,
    status        text NOT NULL,
    registered_at timestamptz NOT NULL,
    last_event_at timestamptz NOT NULL,
    batch_id      text,
    jobs_run      integer NOT NULL DEFAULT 0,
    installs      integer NOT NULL DEFAULT 0
);
