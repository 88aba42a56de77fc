-- Summary of the newest run: one row per case and backend, with its check and time.
-- The check and the time measurement are empty where the case has none. --run picks another run
-- (bound to :run).
WITH newest AS (SELECT coalesce(:run, max(id)) AS id FROM runs),
pairs AS (
  SELECT k.case_id, k.backend FROM checks k
  UNION
  SELECT m.case_id, m.backend FROM measurements m WHERE m.metric = 'time'
)
SELECT c.name AS "case", p.backend AS backend, coalesce(k.status, '') AS status,
       k.max_ulp AS max_ulp, k.nmse AS nmse, m.value AS time, m.unit AS time_unit
FROM cases c
JOIN newest ON c.run_id = newest.id
JOIN pairs p ON p.case_id = c.id
LEFT JOIN checks k ON k.case_id = c.id AND k.backend = p.backend
LEFT JOIN measurements m ON m.case_id = c.id AND m.backend = p.backend AND m.metric = 'time'
ORDER BY c.id, p.backend;
