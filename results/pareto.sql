-- Perplexity against bits per element: each method's Pareto front over its knobs.
-- Op "method" cases with a perplexity (docs/readme-studies.md, scenarios/gutenberg.toml) of the
-- run given with --run (bound to :run), else the newest run that has them. A case is on its
-- method's front when no other case of the same method has ppl_bits_per_element <= and ppl <=,
-- one of them strictly lower. Bits are those of the cache the perplexity ran with, counting
-- scales, zeros, kept fp16 tokens, outliers and indices. Ordered by method, then bits.
WITH chosen AS (
  SELECT coalesce(:run, (SELECT max(c.run_id) FROM cases c
                         JOIN measurements m ON m.case_id = c.id
                         WHERE json_extract(c.params_json, '$.op') = 'method' AND m.metric = 'ppl_bits_per_element')) AS id
),
points AS (
  SELECT c.id, c.name, json_extract(c.params_json, '$.method') AS method,
         max(CASE WHEN m.metric = 'ppl' THEN m.value END) AS ppl,
         max(CASE WHEN m.metric = 'ppl_fp32' THEN m.value END) AS ppl_fp32,
         max(CASE WHEN m.metric = 'ppl_bits_per_element' THEN m.value END) AS bits
  FROM cases c JOIN chosen ON c.run_id = chosen.id
  JOIN measurements m ON m.case_id = c.id AND m.backend = 'ref'
  WHERE json_extract(c.params_json, '$.op') = 'method'
  GROUP BY c.id
  HAVING ppl IS NOT NULL AND bits IS NOT NULL
)
SELECT p.method, p.name AS "case", CAST(printf('%.4g', p.bits) AS REAL) AS bits_per_element,
       CAST(printf('%.5g', p.ppl) AS REAL) AS ppl, printf('%+.2f%%', 100.0 * (p.ppl / p.ppl_fp32 - 1.0)) AS vs_fp32
FROM points p
WHERE NOT EXISTS (
  SELECT 1 FROM points o
  WHERE o.method = p.method AND o.id != p.id AND o.bits <= p.bits AND o.ppl <= p.ppl
    AND (o.bits < p.bits OR o.ppl < p.ppl))
ORDER BY p.method, p.bits, p.ppl;
