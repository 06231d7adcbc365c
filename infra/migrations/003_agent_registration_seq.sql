-- The stream sequence of an agent's latest registration: a job it held from before
-- (an older event) was orphaned by a restart under the same agent id.
ALTER TABLE agents ADD COLUMN registered_seq bigint NOT NULL DEFAULT 0;
