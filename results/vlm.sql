-- AKVQ-VL allocations vs uniform: attention-output relative error, at equal and at more bits.
-- Op "vlm" (docs/spec.md §6).
-- One row per case of the run given with --run (bound to :run), else the newest run with vlm
-- cases: the case name, image tokens, text_attention (the planted text-salient logit, empty for
-- a recording), bits; the budgeted AKVQ-VL and uniform errors at equal code bits; docs/spec.md §6's
-- allocation with its average code bits against uniform at the narrowest width spending as
-- much (uniform_above_bits); bits per element with scales, zeros and the bit-width map.
WITH chosen AS (
  SELECT coalesce(:run, (SELECT max(run_id) FROM cases WHERE op = 'vlm')) AS id
),
pivot AS (
  SELECT c.id, c.name,
         json_extract(c.params_json, '$.image_tokens') AS image_tokens,
         json_extract(c.params_json, '$.text_attention') AS text_attention,
         json_extract(c.params_json, '$.bits') AS bits,
         max(CASE WHEN m.metric = 'akvq_attention_rel_error' THEN m.value END) AS akvq,
         max(CASE WHEN m.metric = 'uniform_attention_rel_error' THEN m.value END) AS uniform,
         max(CASE WHEN m.metric = 'spec_attention_rel_error' THEN m.value END) AS spec,
         max(CASE WHEN m.metric = 'spec_avg_bits' THEN m.value END) AS spec_bits,
         max(CASE WHEN m.metric = 'uniform_above_bits' THEN m.value END) AS above_bits,
         max(CASE WHEN m.metric = 'uniform_above_attention_rel_error' THEN m.value END) AS above,
         max(CASE WHEN m.metric = 'akvq_bits_per_element' THEN m.value END) AS akvq_bpe,
         max(CASE WHEN m.metric = 'spec_bits_per_element' THEN m.value END) AS spec_bpe
  FROM cases c JOIN chosen ON c.run_id = chosen.id
  LEFT JOIN measurements m ON m.case_id = c.id AND m.backend = 'ref'
  WHERE c.op = 'vlm'
  GROUP BY c.id
)
SELECT name AS "case", image_tokens, text_attention, bits,
       CAST(printf('%.4g', akvq) AS REAL) AS akvq_error, CAST(printf('%.4g', uniform) AS REAL) AS uniform_error,
       CASE WHEN akvq < uniform THEN 'akvq-vl' ELSE 'uniform' END AS equal_bits_winner,
       CAST(printf('%.4g', spec) AS REAL) AS spec_error, CAST(printf('%.3f', spec_bits) AS REAL) AS spec_avg_bits,
       CAST(above_bits AS INTEGER) AS uniform_above_bits, CAST(printf('%.4g', above) AS REAL) AS uniform_above_error,
       CASE WHEN spec < above THEN 'spec' ELSE 'uniform' END AS spec_vs_above_winner,
       CAST(printf('%.4g', akvq_bpe) AS REAL) AS akvq_bits_per_element, CAST(printf('%.4g', spec_bpe) AS REAL) AS spec_bits_per_element
FROM pivot
ORDER BY id;
