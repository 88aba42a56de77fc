-- Sink predictors vs the attention-mass ground truth: precision, recall, missed/extra tokens.
-- One row per input and predictor (docs/spec.md §4), from either layout: `kvq sinks --db` (one case
-- per predictor, its tokens in params; input = the recording) or scenario op "sinks" (one case
-- per recording, each predictor under params.result.predictors, measurements NAME.precision,
-- NAME.recall, ...; input = the case name, as the recording may be a cache file). Reads
-- the run given with --run (bound to :run), else the newest run with sink cases. planted_* score
-- the predictor against the sinks planted by `kvq synth` (empty for real recordings); missed and
-- extra are token positions; beyond lists predictions past the scored range (not counted).
WITH chosen AS (
  SELECT coalesce(:run, (SELECT max(run_id) FROM cases WHERE op = 'sinks')) AS id
),
predictors AS (
  SELECT c.id AS case_id, 0 AS pos, '' AS prefix,
         json_extract(c.params_json, '$.recording') AS input,
         json_extract(c.params_json, '$.predictor') AS predictor,
         json_extract(c.params_json, '$.predicted') AS predicted,
         json_extract(c.params_json, '$.missed') AS missed,
         json_extract(c.params_json, '$.extra') AS extra,
         json_extract(c.params_json, '$.unscored') AS unscored
  FROM cases c JOIN chosen ON c.run_id = chosen.id
  WHERE c.op = 'sinks' AND json_extract(c.params_json, '$.predictor') IS NOT NULL
  UNION ALL
  SELECT c.id, p.id, p.key || '.',
         c.name, p.key,
         json_extract(p.value, '$.predicted'), json_extract(p.value, '$.missed'),
         json_extract(p.value, '$.extra'), json_extract(p.value, '$.unscored')
  FROM cases c JOIN chosen ON c.run_id = chosen.id,
       json_each(c.params_json, '$.result.predictors') p
  WHERE c.op = 'sinks'
)
SELECT p.input AS input, p.predictor AS predictor,
       json_array_length(p.predicted) AS predicted,
       CASE WHEN mp.value IS NULL THEN NULL ELSE CAST(printf('%.4f', mp.value) AS REAL) END AS precision,
       CASE WHEN mr.value IS NULL THEN NULL ELSE CAST(printf('%.4f', mr.value) AS REAL) END AS recall,
       CASE WHEN pp.value IS NULL THEN NULL ELSE CAST(printf('%.4f', pp.value) AS REAL) END AS planted_precision,
       CASE WHEN pr.value IS NULL THEN NULL ELSE CAST(printf('%.4f', pr.value) AS REAL) END AS planted_recall,
       trim(coalesce(p.missed, ''), '[]') AS missed,
       trim(coalesce(p.extra, ''), '[]') AS extra,
       trim(coalesce(p.unscored, ''), '[]') AS beyond
FROM predictors p
LEFT JOIN measurements mp ON mp.case_id = p.case_id AND mp.metric = p.prefix || 'precision'
LEFT JOIN measurements mr ON mr.case_id = p.case_id AND mr.metric = p.prefix || 'recall'
LEFT JOIN measurements pp ON pp.case_id = p.case_id
                         AND pp.metric = p.prefix || 'planted_precision'
LEFT JOIN measurements pr ON pr.case_id = p.case_id AND pr.metric = p.prefix || 'planted_recall'
ORDER BY p.case_id, p.pos;
