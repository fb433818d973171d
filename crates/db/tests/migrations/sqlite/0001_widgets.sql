-- A tiny table exercising every portable column type. Booleans are INTEGER here: the Any
-- driver rejects SQLite's BOOLEAN (and DATE/DATETIME/NUMERIC) declared types.
CREATE TABLE widgets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    active INTEGER NOT NULL
);
