-- Super Experts: layer, expert, max_abs and the token and channel of that maximum.
-- One row per input and Super Expert, ranked (docs/spec.md §5), from either layout: `kvq experts
-- --db` (op "super_experts", one case per Super Expert; input = the recording) or scenario op
-- "experts" (one case per recording, the list under params.result.super_experts; input = the
-- case name, as the recording may be a cache file). Reads the run given with --run (bound
-- to :run), else the newest run with expert cases.
WITH chosen AS (
  SELECT coalesce(:run, (SELECT max(run_id) FROM cases WHERE op IN ('super_experts', 'experts')))
         AS id
),
experts AS (
  SELECT c.id AS case_id, json_extract(c.params_json, '$.recording') AS input,
         json_extract(c.params_json, '$.rank') AS rank,
         json_extract(c.params_json, '$.layer') AS layer,
         json_extract(c.params_json, '$.expert') AS expert, m.value AS max_abs,
         json_extract(c.params_json, '$.token') AS token,
         json_extract(c.params_json, '$.channel') AS channel
  FROM cases c
  JOIN chosen ON c.run_id = chosen.id
  LEFT JOIN measurements m ON m.case_id = c.id AND m.metric = 'max_abs'
  WHERE c.op = 'super_experts' AND json_extract(c.params_json, '$.rank') IS NOT NULL
  UNION ALL
  SELECT c.id, c.name,
         json_extract(e.value, '$.rank'), json_extract(e.value, '$.layer'),
         json_extract(e.value, '$.expert'), json_extract(e.value, '$.max_abs'),
         json_extract(e.value, '$.token'), json_extract(e.value, '$.channel')
  FROM cases c JOIN chosen ON c.run_id = chosen.id,
       json_each(c.params_json, '$.result.super_experts') e
  WHERE c.op = 'experts'
)
SELECT input, rank, layer, expert,
       CASE WHEN max_abs IS NULL THEN NULL ELSE CAST(printf('%.6g', max_abs) AS REAL) END AS max_abs,
       token, channel
FROM experts
ORDER BY input, case_id, rank;
