// JsonSchema: a validator for a subset of JSON Schema draft 2020-12, used to check job specs
// (configs/job.schema.json) before any work starts, with messages that name the field and the
// rule ("job.json: distill.lr: must be > 0, got 0").
//
// Supported keywords: type, properties, required, additionalProperties, items, minItems,
// maxItems, uniqueItems, enum, const, minimum, maximum, exclusiveMinimum, exclusiveMaximum,
// minLength, maxLength, pattern, oneOf, anyOf, $ref ("#/$defs/<name>" only), $defs; the
// annotations $schema, $id, $comment, title, description, default and examples are accepted and
// ignored by validation. A schema may also be `true` or `false`. Any other keyword fails Parse,
// so a schema can never contain a rule that is silently not enforced.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "hyb/common/json_util.h"
#include "hyb/common/status.h"

namespace hyb {

// A `pattern` is only matched against strings up to this many bytes; a longer string fails the
// check with an error that says so. libstdc++'s std::regex recurses once per input character
// (a 10,000-character string overflows an 8 MiB stack), and the strings come from users.
inline constexpr size_t kMaxPatternInputBytes = 1024;

// A compiled schema. Immutable once parsed: copies are cheap (they share the compiled form) and
// every const method may be called from any number of threads at once.
class JsonSchema {
 public:
  // Compiles a schema document; `source` (a path or label) prefixes every error. Fails with
  // InvalidArgument "<source>: schema at <pointer>: <problem>", where <pointer> is the JSON
  // pointer of the offending subschema in URI-fragment form ("#/properties/lr", "#" for the
  // root), for: an unsupported keyword (named in the message); a keyword with a bad value (e.g.
  // a negative minLength, a `pattern` std::regex cannot compile); a $ref that is not of the form
  // "#/$defs/<name>" or names no entry of the root's $defs; a cycle of $ref/oneOf/anyOf that
  // never descends into the instance (validation would recurse forever); a cycle of object
  // defaults that WithDefaults would expand forever; a `default` that does not validate against
  // its own subschema.
  static StatusOr<JsonSchema> Parse(const Json& schema, std::string source);

  // Validates `value` and returns the first error found, as InvalidArgument
  // "<source>: <path>: <problem>". <path> is the instance location in dotted form: `distill.lr`,
  // `tasks[2].type`, `(root)` for the document itself. Deterministic: within one object, unknown
  // fields are reported first, then missing required fields (in the schema's order), then the
  // values of the present properties in key order; array items in index order. Recursion is
  // bounded by the depth of `value` (ParseJson limits it to kMaxJsonDepth).
  Status Validate(const Json& value, std::string_view source) const;

  // Returns a copy of `value` with the `default` of every absent property filled in,
  // recursively into objects and arrays that are present (properties, additionalProperties and
  // items) and into absent object-valued properties whose default is an object. A property's
  // default is its subschema's own `default`, else that of the subschema its $ref names. Defaults
  // inside a oneOf are filled from the one alternative `value` matches; anyOf alternatives are
  // not descended (which alternative's defaults apply would be ambiguous). Call after Validate
  // succeeded; on an invalid value it fills what it can and never fails.
  Json WithDefaults(const Json& value) const;

 private:
  struct Compiled;  // the compiled node graph, defined in json_schema.cc

  explicit JsonSchema(std::shared_ptr<const Compiled> compiled) : compiled_(std::move(compiled)) {}

  std::shared_ptr<const Compiled> compiled_;  // never null
};

}  // namespace hyb
