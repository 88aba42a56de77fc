// Rows in the results store (harness/store.h), so `python -m kvq.ppl` writes runs and cases in
// the schema `kvq report` reads, through the same code as `kvq ppl`.
#include <pybind11/stl.h>

#include "harness/store.h"
#include "python/src/arrays.h"
#include "python/src/bindings.h"

namespace kvq::py_bind {

void bind_store(py::module_& m) {
  py::class_<Store>(m, "Store", "The SQLite results store (results/schema.sql).")
      .def(py::init<const std::string&>(), py::arg("path"))
      .def(
          "begin_run",
          [](Store& s, const std::string& command) {
            return s.begin_run(collect_run_info("", command));
          },
          py::arg("command"), "a new run (status incomplete) recorded with this command line")
      .def(
          "add_case",
          [](Store& s, int64_t run, const std::string& name, const std::string& op,
             const std::string& params_json, const std::string& repro,
             const std::vector<std::tuple<std::string, std::string, double, std::string>>& ms) {
            CaseRecord record{name, op, params_json, repro};
            std::vector<Measurement> measurements;
            for (const auto& [backend, metric, value, unit] : ms) {
              Measurement x;
              x.backend = backend;
              x.metric = metric;
              x.value = value;
              x.unit = unit;
              measurements.push_back(x);
            }
            return s.add_case(run, record, {}, measurements);
          },
          py::arg("run"), py::arg("name"), py::arg("op"), py::arg("params_json"),
          py::arg("repro"), py::arg("measurements"),
          "one case with measurements [(backend, metric, value, unit)]; returns its id")
      .def("finish_run", &Store::finish_run, py::arg("run"), py::arg("status"));
}

}  // namespace kvq::py_bind
