#include "engine/jinja_eval.hpp"

#include <unordered_map>

#include "engine/jinja_builtins.hpp"

namespace troupe::jinja {

bool known_filter(std::string_view name) { return is_filter(name); }
bool known_test(std::string_view name) { return is_test(name); }

namespace {

// Unwinds a loop body for {% break %} / {% continue %}.
struct LoopControl {
  bool is_break;
};

class Renderer {
 public:
  explicit Renderer(const std::vector<std::pair<std::string, Value>>& vars) {
    scopes_.emplace_back();
    for (const auto& [k, v] : vars) scopes_.back()[k] = v;
  }

  std::string run(const Body& body) {
    exec(body);
    return std::move(out_);
  }

 private:
  using Scope = std::unordered_map<std::string, Value>;

  [[noreturn]] static void fail(int line, const std::string& what) {
    throw TemplateError("chat template line " + std::to_string(line) + ": " + what);
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    return global_function(name);
  }

  void exec(const Body& body) {
    for (const Node& n : body) exec(n);
  }

  void exec(const Node& n) {
    try {
      switch (n.kind) {
        case Node::Kind::text: out_ += n.text; return;
        case Node::Kind::output: out_ += eval(*n.expr).to_str(); return;
        case Node::Kind::if_:
          for (const auto& [cond, body] : n.branches) {
            if (eval(*cond).truthy()) {
              exec(body);
              return;
            }
          }
          exec(n.else_body);
          return;
        case Node::Kind::for_: exec_for(n); return;
        case Node::Kind::set: assign(n, eval(*n.expr)); return;
        case Node::Kind::set_block: {
          std::string saved = std::move(out_);
          out_.clear();
          exec(n.body);
          std::string captured = std::move(out_);
          out_ = std::move(saved);
          scopes_.back()[n.targets[0]] = Value(captured);
          return;
        }
        case Node::Kind::break_:
        case Node::Kind::continue_:
          if (loop_depth_ == 0) fail(n.line, "break / continue outside a loop");
          throw LoopControl{n.kind == Node::Kind::break_};
      }
    } catch (const TemplateError& e) {
      rethrow_with_line(e, n.line);
    }
  }

  static void rethrow_with_line(const TemplateError& e, int line) {
    std::string_view msg = e.what();
    if (msg.starts_with("chat template line ")) throw;
    fail(line, std::string(msg));
  }

  void assign(const Node& n, const Value& v) {
    if (!n.attr.empty()) {
      Value target = lookup(n.targets[0]);
      if (target.kind() != Value::Kind::ns) fail(n.line, "cannot assign attribute '" + n.attr + "' on '" + n.targets[0] + "': not a namespace");
      target.dict_ref().set(Value(n.attr), v);
      return;
    }
    if (n.targets.size() == 1) {
      scopes_.back()[n.targets[0]] = v;
      return;
    }
    std::vector<Value> items = iterate(v);
    if (items.size() != n.targets.size())
      fail(n.line, "cannot unpack " + std::to_string(items.size()) + " values into " + std::to_string(n.targets.size()) + " names");
    for (size_t i = 0; i < items.size(); ++i) scopes_.back()[n.targets[i]] = items[i];
  }

  void bind_targets(const Node& n, Scope& scope, const Value& item) {
    if (n.targets.size() == 1) {
      scope[n.targets[0]] = item;
      return;
    }
    std::vector<Value> parts = iterate(item);
    if (parts.size() != n.targets.size())
      fail(n.line, "cannot unpack " + std::to_string(parts.size()) + " values into " + std::to_string(n.targets.size()) + " loop variables");
    for (size_t i = 0; i < parts.size(); ++i) scope[n.targets[i]] = parts[i];
  }

  void exec_for(const Node& n) {
    Value iterable = eval(*n.expr);
    if (iterable.is_none()) fail(n.line, "'NoneType' object is not iterable");
    std::vector<Value> items = iterate(iterable);
    if (n.filter) {
      std::vector<Value> kept;
      for (const Value& item : items) {
        scopes_.emplace_back();
        bind_targets(n, scopes_.back(), item);
        bool keep = eval(*n.filter).truthy();
        scopes_.pop_back();
        if (keep) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      exec(n.else_body);
      return;
    }
    const int64_t length = static_cast<int64_t>(items.size());
    ++loop_depth_;
    for (int64_t i = 0; i < length; ++i) {
      // Each iteration has its own scope: what one sets is gone in the next (Jinja's rule).
      scopes_.emplace_back();
      Scope& scope = scopes_.back();
      bind_targets(n, scope, items[static_cast<size_t>(i)]);
      Value loop = Value::dict();
      Dict& d = loop.dict_ref();
      d.set(Value("index"), Value(i + 1));
      d.set(Value("index0"), Value(i));
      d.set(Value("revindex"), Value(length - i));
      d.set(Value("revindex0"), Value(length - i - 1));
      d.set(Value("first"), Value(i == 0));
      d.set(Value("last"), Value(i == length - 1));
      d.set(Value("length"), Value(length));
      d.set(Value("depth"), Value(int64_t{1}));
      d.set(Value("depth0"), Value(int64_t{0}));
      d.set(Value("previtem"), i > 0 ? items[static_cast<size_t>(i - 1)] : Value::undefined("previtem"));
      d.set(Value("nextitem"), i + 1 < length ? items[static_cast<size_t>(i + 1)] : Value::undefined("nextitem"));
      d.set(Value("cycle"), Value::function([i](std::vector<Value>& args, Kwargs&) -> Value {
              if (args.empty()) throw TemplateError("no items for cycling given");
              return args[static_cast<size_t>(i) % args.size()];
            }));
      scope["loop"] = loop;
      bool stop = false;
      try {
        exec(n.body);
      } catch (const LoopControl& c) {
        stop = c.is_break;
      }
      scopes_.pop_back();
      if (stop) break;
    }
    --loop_depth_;
  }

  Value eval(const Expr& e) {
    try {
      return eval_inner(e);
    } catch (const TemplateError& err) {
      rethrow_with_line(err, e.line);
      throw;
    }
  }

  void call_args(const Expr& e, std::vector<Value>& args, Kwargs& kwargs) {
    for (const auto& a : e.args) args.push_back(eval(*a));
    for (const auto& [k, v] : e.kwargs) kwargs.items.emplace_back(k, eval(*v));
  }

  Value eval_inner(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::literal: return e.value;
      case Expr::Kind::name: {
        Value v = lookup(e.name);
        if (v.is_undefined()) return Value::undefined(e.name);
        return v;
      }
      case Expr::Kind::list:
      case Expr::Kind::tuple: {
        List items;
        for (const auto& a : e.args) items.push_back(eval(*a));
        return e.kind == Expr::Kind::list ? Value::list(std::move(items)) : Value::tuple(std::move(items));
      }
      case Expr::Kind::dict: {
        Value d = Value::dict();
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) d.dict_ref().set(eval(*e.args[i]), eval(*e.args[i + 1]));
        return d;
      }
      case Expr::Kind::attr: return get_attr(eval(*e.a), e.name);
      case Expr::Kind::item: return get_item(eval(*e.a), eval(*e.b));
      case Expr::Kind::slice: {
        Value obj = eval(*e.a);
        Value parts[3];
        for (size_t k = 0; k < 3; ++k)
          if (e.args[k]) parts[k] = eval(*e.args[k]);
        return get_slice(obj, parts[0], parts[1], parts[2]);
      }
      case Expr::Kind::call: {
        Value callee = eval(*e.a);
        std::vector<Value> args;
        Kwargs kwargs;
        call_args(e, args, kwargs);
        if (callee.is_undefined()) {
          throw TemplateError(callee.undefined_name().empty() ? std::string("undefined value called")
                                                              : "'" + callee.undefined_name() + "' is undefined");
        }
        if (callee.kind() != Value::Kind::function) throw TemplateError(callee.repr() + " is not callable");
        return callee.fn()(args, kwargs);
      }
      case Expr::Kind::filter: {
        Value v = eval(*e.a);
        std::vector<Value> args;
        Kwargs kwargs;
        call_args(e, args, kwargs);
        return apply_filter(e.name, v, args, kwargs);
      }
      case Expr::Kind::test: {
        Value v = eval(*e.a);
        std::vector<Value> args;
        Kwargs kwargs;
        call_args(e, args, kwargs);
        return Value(apply_test(e.name, v, args) != e.negated);
      }
      case Expr::Kind::unary: {
        if (e.name == "not") return Value(!eval(*e.a).truthy());
        Value v = eval(*e.a);
        if (e.name == "-") return negate(v);
        if (!v.is_number()) throw TemplateError("bad operand type for unary +");
        return v;
      }
      case Expr::Kind::binary: {
        if (e.name == "and") {
          Value l = eval(*e.a);
          return l.truthy() ? eval(*e.b) : l;
        }
        if (e.name == "or") {
          Value l = eval(*e.a);
          return l.truthy() ? l : eval(*e.b);
        }
        Value l = eval(*e.a);
        return binary_op(e.name, l, eval(*e.b));
      }
      case Expr::Kind::concat: {
        std::string s;
        for (const auto& a : e.args) s += eval(*a).to_str();
        return Value(s);
      }
      case Expr::Kind::compare: {
        Value left = eval(*e.a);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.args[i]);
          if (!compare(e.ops[i], left, right)) return Value(false);
          left = std::move(right);
        }
        return Value(true);
      }
      case Expr::Kind::cond:
        if (eval(*e.a).truthy()) return eval(*e.b);
        return e.c ? eval(*e.c) : Value::undefined();
    }
    return Value();
  }

  std::vector<Scope> scopes_;
  std::string out_;
  int loop_depth_ = 0;
};

}  // namespace

std::string render(const Body& body, const std::vector<std::pair<std::string, Value>>& vars) {
  return Renderer(vars).run(body);
}

}  // namespace troupe::jinja
