-- KV-cache bytes per token and largest batch per method and context, fp16 vs the method.
-- Op "memory" (docs/spec.md §3/§8): bytes counted from the stored layouts, the batch within the
-- scenario's budget. One row per case of the run given with --run (bound to :run), else the newest run
-- with memory cases; the paper's claimed ratios beside ours where the method has one.
WITH chosen AS (
  SELECT coalesce(:run, (SELECT max(run_id) FROM cases WHERE op = 'memory')) AS id
),
pivot AS (
  SELECT c.id,
         json_extract(c.params_json, '$.method') AS method,
         json_extract(c.params_json, '$.bits') AS bits,
         json_extract(c.params_json, '$.context') AS context,
         max(CASE WHEN m.metric = 'bits_per_element' THEN m.value END) AS bpe,
         max(CASE WHEN m.metric = 'bytes_per_token' THEN m.value END) AS bytes,
         max(CASE WHEN m.metric = 'max_batch' THEN m.value END) AS batch,
         max(CASE WHEN m.metric = 'fp16_max_batch' THEN m.value END) AS fp16_batch,
         max(CASE WHEN m.metric = 'batch_ratio' THEN m.value END) AS batch_ratio,
         max(CASE WHEN m.metric = 'memory_ratio' THEN m.value END) AS memory_ratio,
         max(CASE WHEN m.metric = 'paper_batch_ratio' THEN m.value END) AS paper_batch,
         max(CASE WHEN m.metric = 'paper_memory_ratio' THEN m.value END) AS paper_memory
  FROM cases c JOIN chosen ON c.run_id = chosen.id
  LEFT JOIN measurements m ON m.case_id = c.id AND m.backend = 'ref'
  WHERE c.op = 'memory'
  GROUP BY c.id
)
SELECT method, bits, context, CAST(printf('%.4g', bpe) AS REAL) AS bits_per_element,
       CAST(printf('%.1f', bytes) AS REAL) AS bytes_per_token, CAST(batch AS INTEGER) AS max_batch,
       CAST(fp16_batch AS INTEGER) AS fp16_max_batch,
       CASE WHEN batch_ratio IS NULL THEN NULL ELSE CAST(printf('%.3g', batch_ratio) AS REAL) END AS batch_ratio,
       CAST(printf('%.3g', memory_ratio) AS REAL) AS memory_ratio,
       CASE WHEN paper_batch IS NULL THEN NULL ELSE CAST(printf('%.3g', paper_batch) AS REAL) END AS paper_batch_ratio,
       CASE WHEN paper_memory IS NULL THEN NULL ELSE CAST(printf('%.3g', paper_memory) AS REAL) END AS paper_memory_ratio
FROM pivot
ORDER BY id;
