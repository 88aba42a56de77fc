// Formatting of report query results (`kvq report`): an aligned text table, CSV (RFC 4180
// quoting) or JSON (an array of objects, one per row: numbers as numbers, NULL as null, text as
// strings, by each value's SQLite type).
#pragma once

#include <ostream>
#include <string>

#include "harness/store/store.h"

namespace kvq {

enum class ReportFormat { Table, Csv, Json };

// "table" | "csv" | "json"; anything else is a kvq::Error naming the choices.
ReportFormat parse_report_format(const std::string& name);

void write_report(const QueryResult& result, ReportFormat format, std::ostream& out);

}  // namespace kvq
