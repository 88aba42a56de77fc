-- Methods ranked by perplexity at matched bits: for each budget, each method's best case within it.
-- Op "method" cases with a perplexity of the run given with --run (bound to :run), else the newest
-- run that has them. For a budget B in 2.5, 3, 3.5, 4, 5, 6 and 8 bits per element (those of the
-- cache the perplexity ran with), each method's lowest perplexity over its cases spending at most
-- B, ranked; the last column says whether the papers' order rotatekv < kivi < rtn (lower
-- perplexity first) held at that budget, or n/a when one of the three has no case within it.
WITH chosen AS (
  SELECT coalesce(:run, (SELECT max(c.run_id) FROM cases c
                         JOIN measurements m ON m.case_id = c.id
                         WHERE json_extract(c.params_json, '$.op') = 'method' AND m.metric = 'ppl_bits_per_element')) AS id
),
points AS (
  SELECT c.id, c.name, json_extract(c.params_json, '$.method') AS method,
         max(CASE WHEN m.metric = 'ppl' THEN m.value END) AS ppl,
         max(CASE WHEN m.metric = 'ppl_bits_per_element' THEN m.value END) AS bits
  FROM cases c JOIN chosen ON c.run_id = chosen.id
  JOIN measurements m ON m.case_id = c.id AND m.backend = 'ref'
  WHERE json_extract(c.params_json, '$.op') = 'method' AND json_extract(c.params_json, '$.method') != 'fp32'
  GROUP BY c.id
  HAVING ppl IS NOT NULL AND bits IS NOT NULL
),
budgets(budget) AS (VALUES (2.5), (3.0), (3.5), (4.0), (5.0), (6.0), (8.0)),
best AS (
  SELECT b.budget, p.method, min(p.ppl) AS ppl
  FROM budgets b JOIN points p ON p.bits <= b.budget
  GROUP BY b.budget, p.method
),
ranked AS (
  SELECT best.budget, best.method, best.ppl,
         (SELECT p.name FROM points p WHERE p.method = best.method AND p.bits <= best.budget
          AND p.ppl = best.ppl ORDER BY p.bits, p.id LIMIT 1) AS name,
         (SELECT min(p.bits) FROM points p WHERE p.method = best.method
          AND p.bits <= best.budget AND p.ppl = best.ppl) AS bits,
         rank() OVER (PARTITION BY best.budget ORDER BY best.ppl) AS rank
  FROM best
),
papers AS (
  SELECT budget, max(CASE WHEN method = 'rotatekv' THEN ppl END) AS r,
         max(CASE WHEN method = 'kivi' THEN ppl END) AS k,
         max(CASE WHEN method = 'rtn' THEN ppl END) AS t
  FROM best GROUP BY budget
)
SELECT r.budget AS bits_budget, r.rank, r.method, CAST(printf('%.5g', r.ppl) AS REAL) AS ppl,
       CAST(printf('%.4g', r.bits) AS REAL) AS bits_per_element, r.name AS "case",
       CASE WHEN p.r IS NULL OR p.k IS NULL OR p.t IS NULL THEN 'n/a'
            WHEN p.r < p.k AND p.k < p.t THEN 'held' ELSE 'did not hold' END
         AS "rotatekv<kivi<rtn"
FROM ranked r JOIN papers p ON p.budget = r.budget
ORDER BY r.budget, r.rank;
