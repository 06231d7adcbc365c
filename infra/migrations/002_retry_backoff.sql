-- A requeued job waits for its retry backoff before a claim may take it.
ALTER TABLE jobs ADD COLUMN not_before timestamptz;
