#include "hyb/common/json_schema.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <numeric>
#include <optional>
#include <regex>
#include <set>
#include <utility>
#include <vector>

namespace hyb {
namespace {

// One bit per JSON Schema type name; `integer` is a separate bit because an integral-valued
// number matches both it and `number`.
enum TypeBit : uint8_t {
  kObjectBit = 1 << 0,
  kArrayBit = 1 << 1,
  kStringBit = 1 << 2,
  kNumberBit = 1 << 3,
  kIntegerBit = 1 << 4,
  kBooleanBit = 1 << 5,
  kNullBit = 1 << 6,
};

struct TypeName {
  std::string_view name;  // as written in a schema
  uint8_t bit;
  std::string_view phrase;  // as used in "must be <phrase>"
};

constexpr TypeName kTypeNames[] = {
    {"object", kObjectBit, "an object"},
    {"array", kArrayBit, "an array"},
    {"string", kStringBit, "a string"},
    {"number", kNumberBit, "a number"},
    {"integer", kIntegerBit, "an integer"},
    {"boolean", kBooleanBit, "a boolean"},
    {"null", kNullBit, "null"},
};

// A numeric bound: the value compared against, and the literal as written for messages.
struct Bound {
  double value = 0;
  Json literal;
};

// One compiled subschema. Children are indices into Compiled::nodes; -1 means absent.
struct Node {
  std::string pointer;                 // where it sits in the schema document: "#/properties/lr"
  bool reject_all = false;             // the `false` schema
  uint8_t type_mask = 0;               // 0: no `type` keyword
  std::vector<const TypeName*> types;  // in the schema's order, for messages
  std::map<std::string, int> properties;
  std::vector<std::string> required;
  int additional_properties = -1;
  int items = -1;
  std::optional<uint64_t> min_items, max_items, min_length, max_length;
  bool unique_items = false;
  std::optional<std::vector<Json>> enum_values;
  std::optional<Json> const_value;
  std::optional<Bound> minimum, maximum, exclusive_minimum, exclusive_maximum;
  std::optional<std::regex> pattern;
  std::string pattern_source;
  std::vector<int> one_of, any_of;
  int ref = -1;
  std::optional<Json> default_value;
};

bool IsAnnotation(std::string_view key) {
  return key == "$schema" || key == "$id" || key == "$comment" || key == "title" ||
         key == "description" || key == "default" || key == "examples";
}

bool IsIntegral(const Json& v) {
  if (v.is_number_integer()) return true;
  if (!v.is_number_float()) return false;
  const double d = v.get<double>();
  return std::isfinite(d) && d == std::floor(d);
}

uint8_t TypeBitsOf(const Json& v) {
  switch (v.type()) {
    case Json::value_t::object:
      return kObjectBit;
    case Json::value_t::array:
      return kArrayBit;
    case Json::value_t::string:
      return kStringBit;
    case Json::value_t::boolean:
      return kBooleanBit;
    case Json::value_t::null:
      return kNullBit;
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
    case Json::value_t::number_float:
      return IsIntegral(v) ? (kNumberBit | kIntegerBit) : kNumberBit;
    default:
      return 0;
  }
}

// Number of code points in valid UTF-8 (nlohmann rejects invalid UTF-8 when parsing): every
// byte that is not a continuation byte starts one.
uint64_t CodePoints(const std::string& s) {
  uint64_t n = 0;
  for (const char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

std::string Plural(uint64_t n, std::string_view noun) {
  return std::to_string(n) + " " + std::string(noun) + (n == 1 ? "" : "s");
}

// Join({"a", "b", "c"}, "or") is "a, b or c".
std::string Join(const std::vector<std::string>& parts, std::string_view last_separator) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i > 0) out += i + 1 == parts.size() ? " " + std::string(last_separator) + " " : ", ";
    out += parts[i];
  }
  return out;
}

std::string PointerChild(const std::string& pointer, std::string_view token) {
  std::string out = pointer + "/";
  for (const char c : token) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out += c;
    }
  }
  return out;
}

std::string PointerChild(const std::string& pointer, size_t index) {
  return pointer + "/" + std::to_string(index);
}

// Instance paths: "" is the root, rendered "(root)" in messages.
std::string FieldPath(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

std::string IndexPath(const std::string& parent, size_t index) {
  return parent + "[" + std::to_string(index) + "]";
}

// The validation error at `path`: "<path>: <problem>" (Validate adds the source).
Status Fail(const std::string& path, const std::string& problem) {
  return InvalidArgument((path.empty() ? std::string("(root)") : path) + ": " + problem);
}

// Returns a cycle of `edges` as the list of its vertices with the first repeated at the end, or
// an empty list when the graph is acyclic. Iterative depth-first search: no recursion.
std::vector<int> FindCycle(const std::vector<std::vector<int>>& edges) {
  enum Color : uint8_t { kWhite, kGrey, kBlack };
  std::vector<Color> color(edges.size(), kWhite);
  std::vector<int> parent(edges.size(), -1);
  for (size_t start = 0; start < edges.size(); ++start) {
    if (color[start] != kWhite) continue;
    std::vector<std::pair<int, size_t>> stack = {{static_cast<int>(start), 0}};
    color[start] = kGrey;
    while (!stack.empty()) {
      auto& [v, next] = stack.back();
      if (next == edges[v].size()) {
        color[v] = kBlack;
        stack.pop_back();
        continue;
      }
      const int w = edges[v][next++];
      if (color[w] == kGrey) {  // back edge: the cycle is w -> ... -> v -> w
        std::vector<int> cycle = {w};
        for (int u = v; u != w; u = parent[u]) cycle.insert(cycle.begin() + 1, u);
        cycle.push_back(w);
        return cycle;
      }
      if (color[w] == kWhite) {
        color[w] = kGrey;
        parent[w] = v;
        stack.emplace_back(w, 0);
      }
    }
  }
  return {};
}

// Turns a schema document into Nodes: checks every keyword, compiles patterns and records
// $refs, which Resolve() then binds to the root's $defs.
class SchemaCompiler {
 public:
  explicit SchemaCompiler(std::string source) : source_(std::move(source)) {}

  // Appends the nodes of `schema` (and its subschemas) and returns the index of its node.
  StatusOr<int> Compile(const Json& schema, const std::string& pointer, bool is_root) {
    const int index = static_cast<int>(nodes_.size());
    nodes_.emplace_back();  // reserved; filled in below once the children are compiled
    Node node;
    node.pointer = pointer;
    if (schema.is_boolean()) {
      node.reject_all = !schema.get<bool>();
      nodes_[index] = std::move(node);
      return index;
    }
    if (!schema.is_object()) {
      return Error(pointer, "a schema must be an object or a boolean, got " + JsonSnippet(schema));
    }
    for (const auto& [key, value] : schema.items()) {
      HYB_RETURN_IF_ERROR(CompileKeyword(key, value, pointer, is_root, index, node));
    }
    nodes_[index] = std::move(node);
    return index;
  }

  // Binds every $ref to its node. Call once, after compiling the root.
  Status Resolve() {
    for (const PendingRef& ref : refs_) {
      auto it = root_defs_.find(ref.name);
      if (it == root_defs_.end()) {
        return Error(
            nodes_[ref.node].pointer,
            "$ref '" + ref.text + "' does not resolve: the root's $defs has no '" + ref.name + "'");
      }
      nodes_[ref.node].ref = it->second;
    }
    return Status::Ok();
  }

  std::vector<Node> TakeNodes() { return std::move(nodes_); }

  Status Error(const std::string& pointer, const std::string& problem) const {
    return InvalidArgument(source_ + ": schema at " + pointer + ": " + problem);
  }

 private:
  struct PendingRef {
    int node;
    std::string name;  // the <name> of "#/$defs/<name>", unescaped
    std::string text;  // the $ref as written
  };

  Status CompileKeyword(const std::string& key, const Json& value, const std::string& pointer,
                        bool is_root, int index, Node& node) {
    const std::string at = PointerChild(pointer, key);
    auto bad_value = [&](std::string_view what) {
      return Error(pointer,
                   "'" + key + "' must be " + std::string(what) + ", got " + JsonSnippet(value));
    };
    if (key == "type") {
      std::vector<Json> names;
      if (value.is_string()) {
        names.push_back(value);
      } else if (value.is_array() && !value.empty()) {
        names.assign(value.begin(), value.end());
      } else {
        return bad_value("a type name or a non-empty array of them");
      }
      for (const Json& name : names) {
        const TypeName* found = nullptr;
        for (const TypeName& t : kTypeNames) {
          if (name.is_string() && name.get<std::string>() == t.name) found = &t;
        }
        if (found == nullptr) {
          return Error(pointer, "'type' has unknown type " + JsonSnippet(name) +
                                    " (known: object, array, string, number, integer, boolean, "
                                    "null)");
        }
        if ((node.type_mask & found->bit) != 0) {
          return Error(pointer, "'type' lists " + JsonSnippet(name) + " twice");
        }
        node.type_mask |= found->bit;
        node.types.push_back(found);
      }
    } else if (key == "properties") {
      if (!value.is_object()) return bad_value("an object");
      for (const auto& [name, sub] : value.items()) {
        HYB_ASSIGN_OR_RETURN(const int child, Compile(sub, PointerChild(at, name), false));
        node.properties[name] = child;
      }
    } else if (key == "required") {
      if (!value.is_array()) return bad_value("an array of field names");
      for (const Json& name : value) {
        if (!name.is_string()) return bad_value("an array of field names");
        const std::string s = name.get<std::string>();
        if (std::find(node.required.begin(), node.required.end(), s) != node.required.end()) {
          return Error(pointer, "'required' lists '" + s + "' twice");
        }
        node.required.push_back(s);
      }
    } else if (key == "additionalProperties") {
      HYB_ASSIGN_OR_RETURN(node.additional_properties, Compile(value, at, false));
    } else if (key == "items") {
      HYB_ASSIGN_OR_RETURN(node.items, Compile(value, at, false));
    } else if (key == "minItems" || key == "maxItems" || key == "minLength" || key == "maxLength") {
      std::optional<uint64_t> n;
      if (value.is_number_unsigned()) {
        n = value.get<uint64_t>();
      } else if (value.is_number_float() && IsIntegral(value) && value.get<double>() >= 0 &&
                 value.get<double>() < 9.0e15) {  // 2020-12 allows 2.0
        n = static_cast<uint64_t>(value.get<double>());
      }
      if (!n) return bad_value("a non-negative integer");
      if (key == "minItems") node.min_items = n;
      if (key == "maxItems") node.max_items = n;
      if (key == "minLength") node.min_length = n;
      if (key == "maxLength") node.max_length = n;
    } else if (key == "uniqueItems") {
      if (!value.is_boolean()) return bad_value("true or false");
      node.unique_items = value.get<bool>();
    } else if (key == "enum") {
      if (!value.is_array() || value.empty()) return bad_value("a non-empty array");
      node.enum_values.emplace(value.begin(), value.end());
    } else if (key == "const") {
      node.const_value = value;
    } else if (key == "minimum" || key == "maximum" || key == "exclusiveMinimum" ||
               key == "exclusiveMaximum") {
      if (!value.is_number()) return bad_value("a number");
      const Bound bound{value.get<double>(), value};
      if (key == "minimum") node.minimum = bound;
      if (key == "maximum") node.maximum = bound;
      if (key == "exclusiveMinimum") node.exclusive_minimum = bound;
      if (key == "exclusiveMaximum") node.exclusive_maximum = bound;
    } else if (key == "pattern") {
      if (!value.is_string()) return bad_value("a string");
      node.pattern_source = value.get<std::string>();
      try {
        node.pattern.emplace(node.pattern_source, std::regex::ECMAScript);
      } catch (const std::regex_error& e) {
        return Error(pointer, "'pattern' " + JsonSnippet(value) + " is not a valid regular " +
                                  "expression: " + e.what());
      }
    } else if (key == "oneOf" || key == "anyOf") {
      if (!value.is_array() || value.empty()) return bad_value("a non-empty array of schemas");
      std::vector<int>& alternatives = key == "oneOf" ? node.one_of : node.any_of;
      for (size_t i = 0; i < value.size(); ++i) {
        HYB_ASSIGN_OR_RETURN(const int child, Compile(value[i], PointerChild(at, i), false));
        alternatives.push_back(child);
      }
    } else if (key == "$ref") {
      if (!value.is_string()) return bad_value("a string");
      const std::string text = value.get<std::string>();
      constexpr std::string_view kPrefix = "#/$defs/";
      if (text.rfind(kPrefix, 0) != 0 || text.size() == kPrefix.size() ||
          text.find('/', kPrefix.size()) != std::string::npos) {
        return Error(pointer, "$ref '" + text + "' is not supported (only '#/$defs/<name>')");
      }
      std::string name;
      for (size_t i = kPrefix.size(); i < text.size(); ++i) {  // JSON pointer unescaping
        if (text[i] == '~' && i + 1 < text.size() && (text[i + 1] == '0' || text[i + 1] == '1')) {
          name += text[++i] == '0' ? '~' : '/';
        } else {
          name += text[i];
        }
      }
      refs_.push_back({index, std::move(name), text});
    } else if (key == "$defs") {
      if (!is_root) {
        return Error(pointer,
                     "$defs is only supported at the root ($ref resolves "
                     "'#/$defs/<name>' against the root)");
      }
      if (!value.is_object()) return bad_value("an object");
      for (const auto& [name, sub] : value.items()) {
        HYB_ASSIGN_OR_RETURN(const int child, Compile(sub, PointerChild(at, name), false));
        root_defs_[name] = child;
      }
    } else if (IsAnnotation(key)) {
      if (key == "default") node.default_value = value;
    } else {
      return Error(pointer, "unsupported keyword '" + key + "'");
    }
    return Status::Ok();
  }

  std::string source_;
  std::vector<Node> nodes_;
  std::map<std::string, int> root_defs_;
  std::vector<PendingRef> refs_;
};

}  // namespace

struct JsonSchema::Compiled {
  std::vector<Node> nodes;  // nodes[0] is the root

  // Compiles `schema` and checks that validation and default filling terminate.
  static StatusOr<std::shared_ptr<const Compiled>> Build(const Json& schema,
                                                         const std::string& source) {
    SchemaCompiler compiler(source);
    HYB_RETURN_IF_ERROR(compiler.Compile(schema, "#", /*is_root=*/true).status());  // node 0
    HYB_RETURN_IF_ERROR(compiler.Resolve());
    auto compiled = std::make_shared<Compiled>();
    compiled->nodes = compiler.TakeNodes();
    const std::vector<Node>& nodes = compiled->nodes;

    // $ref, oneOf and anyOf apply their target to the same value: a cycle of them recurses
    // forever without descending into the value.
    std::vector<std::vector<int>> in_place(nodes.size());
    for (size_t i = 0; i < nodes.size(); ++i) {
      if (nodes[i].ref >= 0) in_place[i].push_back(nodes[i].ref);
      in_place[i].insert(in_place[i].end(), nodes[i].one_of.begin(), nodes[i].one_of.end());
      in_place[i].insert(in_place[i].end(), nodes[i].any_of.begin(), nodes[i].any_of.end());
    }
    if (auto cycle = FindCycle(in_place); !cycle.empty()) {
      return compiler.Error(nodes[cycle[0]].pointer,
                            "$ref/oneOf/anyOf cycle that never descends into the value: " +
                                compiled->Describe(cycle));
    }

    // WithDefaults fills an absent property whose default is an object, then fills defaults
    // inside that object: a property whose default leads to itself again never stops.
    std::vector<std::vector<int>> fills(nodes.size());
    for (size_t i = 0; i < nodes.size(); ++i) {
      const Json* d = compiled->EffectiveDefault(static_cast<int>(i));
      if (d == nullptr || !d->is_object()) continue;
      std::set<int> generated;
      compiled->CollectFills(static_cast<int>(i), *d, generated);
      fills[i].assign(generated.begin(), generated.end());
    }
    if (auto cycle = FindCycle(fills); !cycle.empty()) {
      return compiler.Error(nodes[cycle[0]].pointer,
                            "object defaults would be filled in without end (filling each default "
                            "inserts the next): " +
                                compiled->Describe(cycle));
    }

    // A default is inserted after validation, so it must itself be valid.
    for (size_t i = 0; i < nodes.size(); ++i) {
      if (!nodes[i].default_value) continue;
      const Status s = compiled->Check(static_cast<int>(i), *nodes[i].default_value, "");
      if (!s.ok()) {
        return compiler.Error(nodes[i].pointer, "default " + JsonSnippet(*nodes[i].default_value) +
                                                    " is invalid: " + s.message());
      }
    }
    return std::shared_ptr<const Compiled>(std::move(compiled));
  }

  // "#/$defs/a -> #/$defs/b -> #/$defs/a".
  std::string Describe(const std::vector<int>& cycle) const {
    std::string out;
    for (size_t i = 0; i < cycle.size(); ++i) {
      if (i > 0) out += " -> ";
      out += nodes[cycle[i]].pointer;
    }
    return out;
  }

  // The default for a value of subschema `index`: its own, else its $ref target's.
  const Json* EffectiveDefault(int index) const {
    for (int i = index; i >= 0; i = nodes[i].ref) {  // terminates: $ref chains are acyclic
      if (nodes[i].default_value) return &*nodes[i].default_value;
    }
    return nullptr;
  }

  // Adds to `out` every subschema whose object default Fill(index, value) would insert
  // directly (not counting those filled inside inserted defaults). Over-approximates oneOf by
  // following every alternative.
  void CollectFills(int index, const Json& value, std::set<int>& out) const {
    const Node& n = nodes[index];
    if (value.is_object()) {
      for (const auto& [name, child] : n.properties) {
        auto it = value.find(name);
        if (it != value.end()) {
          CollectFills(child, *it, out);
        } else if (const Json* d = EffectiveDefault(child); d != nullptr && d->is_object()) {
          out.insert(child);
        }
      }
      if (n.additional_properties >= 0) {
        for (const auto& [name, v] : value.items()) {
          if (n.properties.count(name) == 0) CollectFills(n.additional_properties, v, out);
        }
      }
    }
    if (value.is_array() && n.items >= 0) {
      for (const Json& v : value) CollectFills(n.items, v, out);
    }
    if (n.ref >= 0) CollectFills(n.ref, value, out);
    for (const int alternative : n.one_of) CollectFills(alternative, value, out);
  }

  // Validates `value` against subschema `index`; the first error as "<path>: <problem>".
  Status Check(int index, const Json& value, const std::string& path) const {
    const Node& n = nodes[index];
    if (n.reject_all) return Fail(path, "is not allowed here");
    if (n.type_mask != 0 && (n.type_mask & TypeBitsOf(value)) == 0) {
      std::vector<std::string> phrases;
      for (const TypeName* t : n.types) phrases.emplace_back(t->phrase);
      return Fail(path, "must be " + Join(phrases, "or") + ", got " + JsonSnippet(value));
    }
    if (n.const_value && value != *n.const_value) {
      return Fail(path, "must be " + JsonSnippet(*n.const_value) + ", got " + JsonSnippet(value));
    }
    if (n.enum_values &&
        std::find(n.enum_values->begin(), n.enum_values->end(), value) == n.enum_values->end()) {
      std::string allowed;
      for (const Json& e : *n.enum_values)
        allowed += (allowed.empty() ? "" : ", ") + JsonSnippet(e);
      return Fail(path, "must be one of " + allowed + ", got " + JsonSnippet(value));
    }
    if (value.is_number()) {
      HYB_RETURN_IF_ERROR(CheckNumber(n, value, path));
    } else if (value.is_string()) {
      HYB_RETURN_IF_ERROR(CheckString(n, value, path));
    } else if (value.is_array()) {
      HYB_RETURN_IF_ERROR(CheckArray(n, value, path));
    } else if (value.is_object()) {
      HYB_RETURN_IF_ERROR(CheckObject(n, value, path));
    }
    if (n.ref >= 0) {
      HYB_RETURN_IF_ERROR(Check(n.ref, value, path));
    }
    if (!n.any_of.empty()) {
      HYB_RETURN_IF_ERROR(CheckAnyOf(n, value, path));
    }
    if (!n.one_of.empty()) {
      std::vector<size_t> matched;
      Status first_error;
      for (size_t i = 0; i < n.one_of.size(); ++i) {
        Status s = Check(n.one_of[i], value, path);
        if (s.ok()) {
          matched.push_back(i);
        } else if (i == 0) {
          first_error = std::move(s);
        }
      }
      const std::string rule =
          "must match exactly one of " + Plural(n.one_of.size(), "alternative") + ", matched ";
      if (matched.empty()) {
        return Fail(path, rule + "none (first alternative: " + first_error.message() + ")");
      }
      if (matched.size() > 1) {
        std::vector<std::string> which;
        for (const size_t i : matched) which.push_back(std::to_string(i));
        return Fail(path, rule + std::to_string(matched.size()) + " (alternatives " +
                              Join(which, "and") + ")");
      }
    }
    return Status::Ok();
  }

  Status CheckNumber(const Node& n, const Json& value, const std::string& path) const {
    const double d = value.get<double>();
    auto fail = [&](std::string_view op, const Bound& b) {
      return Fail(path, "must be " + std::string(op) + " " + b.literal.dump() + ", got " +
                            JsonSnippet(value));
    };
    if (n.minimum && d < n.minimum->value) return fail(">=", *n.minimum);
    if (n.exclusive_minimum && d <= n.exclusive_minimum->value) {
      return fail(">", *n.exclusive_minimum);
    }
    if (n.maximum && d > n.maximum->value) return fail("<=", *n.maximum);
    if (n.exclusive_maximum && d >= n.exclusive_maximum->value) {
      return fail("<", *n.exclusive_maximum);
    }
    return Status::Ok();
  }

  Status CheckString(const Node& n, const Json& value, const std::string& path) const {
    const std::string& s = value.get_ref<const std::string&>();
    if (n.min_length || n.max_length) {
      const uint64_t length = CodePoints(s);
      if (n.min_length && length < *n.min_length) {
        return Fail(path, "must be at least " + Plural(*n.min_length, "character") + " long, got " +
                              JsonSnippet(value));
      }
      if (n.max_length && length > *n.max_length) {
        return Fail(path, "must be at most " + Plural(*n.max_length, "character") + " long, got " +
                              JsonSnippet(value));
      }
    }
    if (n.pattern) {
      if (s.size() > kMaxPatternInputBytes) {
        return Fail(path, "is too long to check against pattern '" + n.pattern_source + "' (" +
                              Plural(s.size(), "byte") + ", at most " +
                              std::to_string(kMaxPatternInputBytes) + ")");
      }
      if (!std::regex_search(s, *n.pattern)) {
        return Fail(path,
                    "must match pattern '" + n.pattern_source + "', got " + JsonSnippet(value));
      }
    }
    return Status::Ok();
  }

  Status CheckArray(const Node& n, const Json& value, const std::string& path) const {
    if (n.min_items && value.size() < *n.min_items) {
      return Fail(path, "must have at least " + Plural(*n.min_items, "item") + ", got " +
                            std::to_string(value.size()));
    }
    if (n.max_items && value.size() > *n.max_items) {
      return Fail(path, "must have at most " + Plural(*n.max_items, "item") + ", got " +
                            std::to_string(value.size()));
    }
    if (n.unique_items && value.size() > 1) {
      // Sort positions by value (stable, so equal values keep index order) and report the
      // duplicate whose second occurrence comes first. O(n log n) for user-sized arrays.
      std::vector<size_t> order(value.size());
      std::iota(order.begin(), order.end(), size_t{0});
      std::stable_sort(order.begin(), order.end(),
                       [&](size_t a, size_t b) { return value[a] < value[b]; });
      std::optional<std::pair<size_t, size_t>> dup;
      for (size_t k = 0; k + 1 < order.size(); ++k) {
        const size_t first = order[k], second = order[k + 1];
        const bool starts_group = k == 0 || value[order[k - 1]] != value[first];
        if (starts_group && value[first] == value[second] && (!dup || second < dup->second)) {
          dup.emplace(first, second);
        }
      }
      if (dup) {
        return Fail(path, "must have unique items, but [" + std::to_string(dup->first) + "] and [" +
                              std::to_string(dup->second) + "] are both " +
                              JsonSnippet(value[dup->first]));
      }
    }
    if (n.items >= 0) {
      for (size_t i = 0; i < value.size(); ++i) {
        HYB_RETURN_IF_ERROR(Check(n.items, value[i], IndexPath(path, i)));
      }
    }
    return Status::Ok();
  }

  Status CheckObject(const Node& n, const Json& value, const std::string& path) const {
    const bool closed = n.additional_properties >= 0 && nodes[n.additional_properties].reject_all;
    if (closed) {
      for (const auto& [key, v] : value.items()) {
        if (n.properties.count(key) != 0) continue;
        std::string allowed;
        for (const auto& [name, child] : n.properties) {
          allowed += (allowed.empty() ? "" : ", ") + name;
        }
        return Fail(path, "unknown field '" + key + "' (" +
                              (allowed.empty() ? "no fields are allowed" : "allowed: " + allowed) +
                              ")");
      }
    }
    for (const std::string& name : n.required) {
      if (!value.contains(name)) return Fail(path, "missing required field '" + name + "'");
    }
    for (const auto& [key, v] : value.items()) {
      auto it = n.properties.find(key);
      if (it != n.properties.end()) {
        HYB_RETURN_IF_ERROR(Check(it->second, v, FieldPath(path, key)));
      } else if (n.additional_properties >= 0) {
        HYB_RETURN_IF_ERROR(Check(n.additional_properties, v, FieldPath(path, key)));
      }
    }
    return Status::Ok();
  }

  Status CheckAnyOf(const Node& n, const Json& value, const std::string& path) const {
    Status first_error;
    for (size_t i = 0; i < n.any_of.size(); ++i) {
      Status s = Check(n.any_of[i], value, path);
      if (s.ok()) return s;
      if (i == 0) first_error = std::move(s);
    }
    return Fail(path, "must match at least one of " + Plural(n.any_of.size(), "alternative") +
                          ", matched none (first alternative: " + first_error.message() + ")");
  }

  // `value` with the defaults of subschema `index` filled in (see WithDefaults).
  Json Fill(int index, Json value) const {
    const Node& n = nodes[index];
    // The oneOf alternative is chosen on the value as validated, before anything is filled.
    int one_of_match = -1;
    for (const int alternative : n.one_of) {
      if (!Check(alternative, value, "").ok()) continue;
      if (one_of_match >= 0) {  // ambiguous: fill none
        one_of_match = -1;
        break;
      }
      one_of_match = alternative;
    }
    if (value.is_object()) {
      for (const auto& [name, child] : n.properties) {
        auto it = value.find(name);
        if (it != value.end()) {
          *it = Fill(child, std::move(*it));
        } else if (const Json* d = EffectiveDefault(child); d != nullptr) {
          value[name] = d->is_object() ? Fill(child, *d) : *d;
        }
      }
      if (n.additional_properties >= 0) {
        for (auto it = value.begin(); it != value.end(); ++it) {
          if (n.properties.count(it.key()) == 0) {
            *it = Fill(n.additional_properties, std::move(*it));
          }
        }
      }
    }
    if (value.is_array() && n.items >= 0) {
      for (Json& v : value) v = Fill(n.items, std::move(v));
    }
    if (n.ref >= 0) value = Fill(n.ref, std::move(value));
    if (one_of_match >= 0) value = Fill(one_of_match, std::move(value));
    return value;
  }
};

StatusOr<JsonSchema> JsonSchema::Parse(const Json& schema, std::string source) {
  HYB_ASSIGN_OR_RETURN(std::shared_ptr<const Compiled> compiled, Compiled::Build(schema, source));
  return JsonSchema(std::move(compiled));
}

Status JsonSchema::Validate(const Json& value, std::string_view source) const {
  return compiled_->Check(0, value, "").WithContext(source);
}

Json JsonSchema::WithDefaults(const Json& value) const { return compiled_->Fill(0, value); }

}  // namespace hyb
