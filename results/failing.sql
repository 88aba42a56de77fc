-- Failing checks of the newest run, with the first mismatch and the command that reruns it.
-- Status 'fail' or 'error'. --run picks another run (bound to :run).
SELECT c.name AS "case", k.backend AS backend, k.reference AS reference, k.status AS status,
       k.mismatches AS mismatches, k.first_mismatch AS first_mismatch, k.expected AS expected,
       k.got AS got, c.repro AS repro
FROM checks k
JOIN cases c ON c.id = k.case_id
WHERE c.run_id = coalesce(:run, (SELECT max(id) FROM runs)) AND k.status IN ('fail', 'error')
ORDER BY c.id, k.backend;
