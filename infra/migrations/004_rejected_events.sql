-- Messages on QG_EVENTS that are not events (a hand-published bad message, say): parked
-- here by the projectors, which skip them and go on.
CREATE TABLE rejected_events (
    stream_seq  bigint PRIMARY KEY,
    subject     text NOT NULL,
    error       text NOT NULL,
    data        bytea NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT now()
);
