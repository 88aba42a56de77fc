-- Speed-up of each backend over the reference backend ('ref') per case.
-- For the newest run that has time measurements (or --run, bound to :run): reference time /
-- backend time (> 1 is faster than the reference).
WITH newest AS (
  SELECT coalesce(:run, max(c.run_id)) AS id FROM measurements m JOIN cases c ON c.id = m.case_id
  WHERE m.metric = 'time'
)
SELECT c.name AS "case", b.backend AS backend, r.value AS ref_time, b.value AS time,
       b.unit AS unit, r.value / b.value AS speedup
FROM cases c
JOIN newest ON c.run_id = newest.id
JOIN measurements r ON r.case_id = c.id AND r.metric = 'time' AND r.backend = 'ref'
JOIN measurements b ON b.case_id = c.id AND b.metric = 'time' AND b.backend <> 'ref'
                   AND b.unit = r.unit AND b.value > 0
ORDER BY c.id, b.backend;
