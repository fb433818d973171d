-- A migration that fails halfway: the table is made, then a statement breaks.
CREATE TABLE half_done (id TEXT PRIMARY KEY);
SELECT no_such_function();
