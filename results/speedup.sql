-- Speed-up of each backend over the reference backend ('ref') per case, with the run it used.
-- For the newest run that has time measurements (or --run, bound to :run): reference time /
-- backend time (> 1 is faster than the reference). The reference time comes from the same run
-- when it measured 'ref' for the case, else from the newest earlier run on the same host that
-- did (e.g. a 2-thread AVX run against the 1-thread run that timed the reference); ref_run
-- names it. Cases with no such reference are left out.
WITH newest AS (
  SELECT coalesce(:run, max(c.run_id)) AS id FROM measurements m JOIN cases c ON c.id = m.case_id
  WHERE m.metric = 'time'
)
SELECT c.name AS "case", b.backend AS backend, r.value AS ref_time, b.value AS time,
       b.unit AS unit, r.value / b.value AS speedup, rc.run_id AS ref_run
FROM cases c
JOIN newest ON c.run_id = newest.id
JOIN runs cr ON cr.id = c.run_id
JOIN measurements b ON b.case_id = c.id AND b.metric = 'time' AND b.backend <> 'ref'
                   AND b.value > 0
JOIN cases rc ON rc.id = (
  SELECT c2.id FROM cases c2
  JOIN runs r2 ON r2.id = c2.run_id
  JOIN measurements m2 ON m2.case_id = c2.id AND m2.metric = 'time' AND m2.backend = 'ref'
  WHERE c2.name = c.name AND c2.run_id <= c.run_id AND r2.host = cr.host
  ORDER BY c2.run_id DESC, c2.id DESC LIMIT 1)
JOIN measurements r ON r.case_id = rc.id AND r.metric = 'time' AND r.backend = 'ref'
                   AND r.unit = b.unit
ORDER BY c.id, b.backend;
