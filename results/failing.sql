-- Failing checks of the newest run (status 'fail' or 'error'), with the first mismatch and the
-- command that reruns the case.
SELECT c.name AS "case", k.backend AS backend, k.reference AS reference, k.status AS status,
       k.mismatches AS mismatches, k.first_mismatch AS first_mismatch, k.expected AS expected,
       k.got AS got, c.repro AS repro
FROM checks k
JOIN cases c ON c.id = k.case_id
WHERE c.run_id = (SELECT max(id) FROM runs) AND k.status IN ('fail', 'error')
ORDER BY c.id, k.backend;
