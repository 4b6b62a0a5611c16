-- "Is this number already being called?" (one ring at a time per person) is asked before
-- every call is placed, with the statuses as a parameter: a partial index whose predicate
-- spells statuses cannot serve a generic plan (Postgres cannot prove the predicate from a
-- parameter), so every claim would scan the whole calls table. A plain index on the number
-- serves it.
DROP INDEX calls_open_by_phone_idx;
CREATE INDEX calls_phone_idx ON calls (phone, status);
