-- Method x bits -> KV NMSE, attention error (max-norm and L2), score KL, bits/element, perplexity
-- (docs/spec.md §8).
-- One row per input, method and bits, from the cases of op "method". Reads the run given with
-- --run (bound to :run), else the newest run with method cases. `input` is the case name without
-- its method and bits parts (the recording and any other swept keys), so cases that differ only
-- in method and bits line up under one input. Values keep 6 significant digits; ppl_fp32 is the
-- unquantized model's perplexity on the same text.
WITH chosen AS (
  SELECT coalesce(:run, (SELECT max(run_id) FROM cases
                         WHERE json_extract(params_json, '$.op') = 'method')) AS id
),
keyed AS (
  SELECT c.id, c.name,
         json_extract(c.params_json, '$.method') AS method,
         json_extract(c.params_json, '$.bits') AS bits
  FROM cases c JOIN chosen ON c.run_id = chosen.id
  WHERE json_extract(c.params_json, '$.op') = 'method'
),
pivot AS (
  SELECT coalesce(nullif(trim(replace(replace('/' || k.name || '/',
                                              '/' || coalesce(k.method, '') || '/', '/'),
                                      '/b' || coalesce(k.bits, '') || '/', '/'), '/'), ''),
                  k.name) AS input,
         k.method AS method, k.bits AS bits, min(k.id) AS first_case,
         max(CASE WHEN m.metric = 'kv_nmse' THEN m.value END) AS kv_nmse,
         max(CASE WHEN m.metric = 'k_nmse' THEN m.value END) AS k_nmse,
         max(CASE WHEN m.metric = 'v_nmse' THEN m.value END) AS v_nmse,
         max(CASE WHEN m.metric = 'attention_rel_error' THEN m.value END) AS attention_rel_error,
         max(CASE WHEN m.metric = 'attention_rel_l2' THEN m.value END) AS attention_rel_l2,
         max(CASE WHEN m.metric = 'score_kl' THEN m.value END) AS score_kl,
         max(CASE WHEN m.metric = 'bits_per_element' THEN m.value END) AS bits_per_element,
         max(CASE WHEN m.metric = 'ppl' THEN m.value END) AS ppl,
         max(CASE WHEN m.metric = 'ppl_fp32' THEN m.value END) AS ppl_fp32
  FROM keyed k
  LEFT JOIN measurements m ON m.case_id = k.id AND m.backend = 'ref'
  GROUP BY k.id
)
SELECT input, method, bits,
       CASE WHEN kv_nmse IS NULL THEN NULL ELSE CAST(printf('%.6g', kv_nmse) AS REAL) END AS kv_nmse,
       CASE WHEN k_nmse IS NULL THEN NULL ELSE CAST(printf('%.6g', k_nmse) AS REAL) END AS k_nmse,
       CASE WHEN v_nmse IS NULL THEN NULL ELSE CAST(printf('%.6g', v_nmse) AS REAL) END AS v_nmse,
       CASE WHEN attention_rel_error IS NULL THEN NULL
            ELSE CAST(printf('%.6g', attention_rel_error) AS REAL) END AS attention_rel_error,
       CASE WHEN attention_rel_l2 IS NULL THEN NULL
            ELSE CAST(printf('%.6g', attention_rel_l2) AS REAL) END AS attention_rel_l2,
       CASE WHEN score_kl IS NULL THEN NULL ELSE CAST(printf('%.6g', score_kl) AS REAL) END AS score_kl,
       CASE WHEN bits_per_element IS NULL THEN NULL
            ELSE CAST(printf('%.6g', bits_per_element) AS REAL) END AS bits_per_element,
       CASE WHEN ppl IS NULL THEN NULL ELSE CAST(printf('%.6g', ppl) AS REAL) END AS ppl,
       CASE WHEN ppl_fp32 IS NULL THEN NULL ELSE CAST(printf('%.6g', ppl_fp32) AS REAL) END AS ppl_fp32
FROM pivot
ORDER BY input, bits IS NULL, bits, first_case;
