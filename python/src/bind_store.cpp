// What `python -m kvq.ppl` shares with `kvq ppl`: rows in the results store (harness/store/store.h),
// in the schema `kvq report` reads, and the llama2.c tokenizer.
#include <pybind11/stl.h>

#include "harness/model/tokenizer.h"
#include "harness/store/store.h"
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

  // The tokenizer `kvq ppl` uses, so a llama2.c model converted to Hugging Face (kvq.llama2c)
  // sees exactly kvq ppl's token ids.
  py::class_<Tokenizer>(m, "Llama2Tokenizer", "llama2.c's tokenizer (.bin), kvq's encoder.")
      .def(py::init(&Tokenizer::load), py::arg("path"))
      .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
      .def("encode", [](const Tokenizer& t, const std::string& text) { return t.encode(text); },
           py::arg("text"), "token ids of text (no BOS), as kvq ppl encodes its --text");
  m.def("read_text_file", &read_text_file, py::arg("path"),
        "a text file as kvq ppl reads it (kvq.Error naming the file when it cannot)");
}

}  // namespace kvq::py_bind
