// The papers' accuracy ordering, checked on the accuracy report (results/accuracy.sql): RotateKV
// reports lower error than KIVI, and KIVI lower than plain RTN, at equal bits. Whether it held is
// stated per input and bits, with the values that broke it, never hidden.
#pragma once

#include <string>

#include "harness/store/store.h"

namespace kvq {

// Reads the columns input, method, bits, kv_nmse, attention_rel_error and attention_rel_l2 of
// `accuracy`. One row
// per input, bits and metric where at least one of rotatekv, kivi, rtn has that metric. Columns:
// input, bits, metric, rotatekv, kivi, rtn, ordering; ordering is "held", "did not hold: kivi
// 0.12 > rtn 0.1" (each adjacent pair of rotatekv < kivi < rtn that failed, "=" for a tie), or
// "not measured: no kivi" when a method is missing. Throws kvq::Error when a column is missing.
QueryResult paper_orderings(const QueryResult& accuracy);

// For people: one line per input and bits, e.g.
//   "method, 2 bits: kv_nmse held; attention_rel_error did not hold: kivi 0.12 > rtn 0.1".
std::string ordering_lines(const QueryResult& orderings);

}  // namespace kvq
