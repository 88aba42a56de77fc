-- kvq results store (docs/design.md "Results"). Applied once to a new database by harness/store/store.cpp,
-- which then sets PRAGMA user_version = kSchemaVersion (harness/store/store.h). Change this file only
-- together with kSchemaVersion.

-- One invocation of `kvq run` (or gate/bench): what ran, where, from which source tree.
CREATE TABLE IF NOT EXISTS runs (
  id            INTEGER PRIMARY KEY,
  started       TEXT NOT NULL,                       -- UTC, ISO 8601
  finished      TEXT,                                -- NULL until finish_run
  status        TEXT NOT NULL DEFAULT 'incomplete',  -- 'incomplete', 'complete', 'failed'
  git_sha       TEXT NOT NULL,
  host          TEXT NOT NULL,
  cpu_flags     TEXT NOT NULL,
  compiler      TEXT NOT NULL,
  build_type    TEXT NOT NULL,
  gpu           TEXT NOT NULL,                       -- '' when none
  scenario      TEXT NOT NULL,                       -- path as given
  scenario_hash TEXT NOT NULL,                       -- sha256 hex of the scenario file
  command       TEXT NOT NULL                        -- the kvq command line
);

-- One case of a run (op x shapes x params x inputs); written with its checks and measurements
-- in one transaction.
CREATE TABLE IF NOT EXISTS cases (
  id          INTEGER PRIMARY KEY,
  run_id      INTEGER NOT NULL REFERENCES runs(id),
  name        TEXT NOT NULL,
  op          TEXT NOT NULL,
  params_json TEXT NOT NULL,
  repro       TEXT NOT NULL,                         -- the kvq command that reruns this case
  UNIQUE (run_id, name)
);

-- A backend's output compared with the reference's (verify/compare.h).
CREATE TABLE IF NOT EXISTS checks (
  id             INTEGER PRIMARY KEY,
  case_id        INTEGER NOT NULL REFERENCES cases(id),
  backend        TEXT NOT NULL,
  reference      TEXT NOT NULL,
  status         TEXT NOT NULL CHECK (status IN ('pass', 'fail', 'error', 'unsupported', 'skip')),
  mismatches     INTEGER NOT NULL,
  max_ulp        REAL,
  nmse           REAL,
  first_mismatch INTEGER NOT NULL,                   -- flat index, -1 when none
  expected       TEXT NOT NULL,
  got            TEXT NOT NULL                       -- or the error message
);

-- A measured quantity: time, bandwidth, accuracy metric, perplexity.
CREATE TABLE IF NOT EXISTS measurements (
  id          INTEGER PRIMARY KEY,
  case_id     INTEGER NOT NULL REFERENCES cases(id),
  backend     TEXT NOT NULL,
  metric      TEXT NOT NULL,
  value       REAL,
  unit        TEXT NOT NULL,
  repetitions INTEGER NOT NULL,
  spread      REAL
);

CREATE INDEX IF NOT EXISTS cases_run ON cases(run_id);
CREATE INDEX IF NOT EXISTS checks_case ON checks(case_id);
CREATE INDEX IF NOT EXISTS measurements_case ON measurements(case_id);
