#include "hyb/common/json_schema.h"

#include <gtest/gtest.h>

#include <string>

namespace hyb {
namespace {

// A cut-down job spec schema exercising every error kind users see.
constexpr const char* kJobSchema = R"({
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "job spec",
  "type": "object",
  "required": ["job_id", "teacher"],
  "additionalProperties": false,
  "properties": {
    "job_id": {"type": "string", "minLength": 1, "maxLength": 8, "pattern": "^[a-z][a-z0-9_]*$"},
    "teacher": {"type": "string"},
    "data": {"type": "string", "default": "data/train"},
    "distill": {
      "type": "object",
      "additionalProperties": false,
      "default": {},
      "properties": {
        "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.001},
        "steps": {"type": "integer", "minimum": 1, "default": 100},
        "shards": {"type": "integer", "maximum": 8},
        "warmup": {"type": "number", "exclusiveMaximum": 1}
      }
    },
    "mixer": {
      "type": "object",
      "properties": {
        "type": {"enum": ["gated_deltanet", "gla"], "default": "gla"},
        "heads": {"type": ["integer", "null"], "default": null}
      }
    },
    "tasks": {
      "type": "array",
      "minItems": 1,
      "maxItems": 3,
      "uniqueItems": true,
      "items": {"$ref": "#/$defs/task"}
    }
  },
  "$defs": {
    "task": {
      "type": "object",
      "required": ["type"],
      "properties": {
        "type": {"enum": ["mmlu", "recall"]},
        "weight": {"type": "number", "default": 1}
      }
    }
  }
})";

JsonSchema JobSchema() {
  auto schema = JsonSchema::Parse(Json::parse(kJobSchema), "job.schema.json");
  EXPECT_TRUE(schema.ok()) << schema.status().message();
  return std::move(schema).value();
}

// The message of validating `instance` (JSON text) against the job schema; "OK" if valid.
std::string JobError(const std::string& instance) {
  const Status s = JobSchema().Validate(Json::parse(instance), "job.json");
  return s.ok() ? "OK" : s.message();
}

std::string ParseError(const std::string& schema) {
  auto parsed = JsonSchema::Parse(Json::parse(schema), "s.json");
  return parsed.ok() ? "OK" : parsed.status().message();
}

std::string Error(const std::string& schema, const std::string& instance) {
  auto parsed = JsonSchema::Parse(Json::parse(schema), "s.json");
  if (!parsed.ok()) return "schema: " + parsed.status().message();
  const Status s = parsed->Validate(Json::parse(instance), "v.json");
  return s.ok() ? "OK" : s.message();
}

TEST(JsonSchemaTest, ValidDocumentPasses) {
  EXPECT_EQ(JobError(R"({"job_id": "run_1", "teacher": "t",
                         "distill": {"lr": 0.5, "steps": 3, "shards": 8, "warmup": 0.1},
                         "mixer": {"type": "gated_deltanet", "heads": null},
                         "tasks": [{"type": "mmlu"}, {"type": "recall", "weight": 2}]})"),
            "OK");
}

TEST(JsonSchemaTest, UnknownFieldNamesItAndTheAllowedOnesSorted) {
  EXPECT_EQ(JobError(R"({"job_id": "a", "teacher": "t", "distil": {}})"),
            "job.json: (root): unknown field 'distil' (allowed: data, distill, job_id, mixer, "
            "tasks, teacher)");
  EXPECT_EQ(JobError(R"({"job_id": "a", "teacher": "t", "distill": {"lr": 1, "rate": 2}})"),
            "job.json: distill: unknown field 'rate' (allowed: lr, shards, steps, warmup)");
  EXPECT_EQ(Error(R"({"additionalProperties": false})", R"({"x": 1})"),
            "v.json: (root): unknown field 'x' (no fields are allowed)");
}

TEST(JsonSchemaTest, MissingRequiredField) {
  EXPECT_EQ(JobError(R"({"job_id": "a"})"), "job.json: (root): missing required field 'teacher'");
  EXPECT_EQ(JobError(R"({"job_id": "a", "teacher": "t", "tasks": [{"weight": 1}]})"),
            "job.json: tasks[0]: missing required field 'type'");
}

TEST(JsonSchemaTest, TypeErrorsShowTheValue) {
  EXPECT_EQ(JobError(R"({"job_id": "a", "teacher": "t", "distill": {"lr": "abc"}})"),
            "job.json: distill.lr: must be a number, got \"abc\"");
  EXPECT_EQ(JobError(R"({"job_id": "a", "teacher": "t", "mixer": {"heads": "4"}})"),
            "job.json: mixer.heads: must be an integer or null, got \"4\"");
  EXPECT_EQ(JobError(R"([1, 2])"), "job.json: (root): must be an object, got [1,2]");
  EXPECT_EQ(Error(R"({"type": ["object", "array", "null"]})", "true"),
            "v.json: (root): must be an object, an array or null, got true");
}

TEST(JsonSchemaTest, RangeErrorsUseDraft2020Semantics) {
  auto distill = [](const std::string& fields) {
    return JobError(R"({"job_id": "a", "teacher": "t", "distill": {)" + fields + "}}");
  };
  EXPECT_EQ(distill(R"("lr": 0)"), "job.json: distill.lr: must be > 0, got 0");
  EXPECT_EQ(distill(R"("lr": 1e-9)"), "OK");
  EXPECT_EQ(distill(R"("steps": 0)"), "job.json: distill.steps: must be >= 1, got 0");
  EXPECT_EQ(distill(R"("steps": 1)"), "OK");
  EXPECT_EQ(distill(R"("shards": 9)"), "job.json: distill.shards: must be <= 8, got 9");
  EXPECT_EQ(distill(R"("shards": 8)"), "OK");
  EXPECT_EQ(distill(R"("warmup": 1)"), "job.json: distill.warmup: must be < 1, got 1");
  EXPECT_EQ(distill(R"("warmup": 0.5)"), "OK");
  EXPECT_EQ(Error(R"({"minimum": 0.5})", "0.25"), "v.json: (root): must be >= 0.5, got 0.25");
  // Draft 4's boolean exclusiveMinimum is not accepted.
  EXPECT_EQ(ParseError(R"({"minimum": 0, "exclusiveMinimum": true})"),
            "s.json: schema at #: 'exclusiveMinimum' must be a number, got true");
}

TEST(JsonSchemaTest, EnumAndConstListTheAllowedValues) {
  EXPECT_EQ(JobError(R"({"job_id": "a", "teacher": "t", "mixer": {"type": "gdn"}})"),
            "job.json: mixer.type: must be one of \"gated_deltanet\", \"gla\", got \"gdn\"");
  EXPECT_EQ(Error(R"({"const": "gla"})", R"("gdn")"),
            "v.json: (root): must be \"gla\", got \"gdn\"");
  EXPECT_EQ(Error(R"({"enum": [1, "a", null]})", "1.0"), "OK");  // JSON numeric equality
  EXPECT_EQ(Error(R"({"enum": [1, "a", null]})", "2"),
            "v.json: (root): must be one of 1, \"a\", null, got 2");
}

TEST(JsonSchemaTest, NestedPathsThroughArrays) {
  EXPECT_EQ(JobError(R"({"job_id": "a", "teacher": "t",
                         "tasks": [{"type": "mmlu"}, {"type": "gsm8k"}]})"),
            "job.json: tasks[1].type: must be one of \"mmlu\", \"recall\", got \"gsm8k\"");
  EXPECT_EQ(Error(R"({"items": {"items": {"type": "string"}}})", R"([[], ["a", 3]])"),
            "v.json: [1][1]: must be a string, got 3");
  EXPECT_EQ(JobError(R"({"job_id": "a", "teacher": "t", "tasks": []})"),
            "job.json: tasks: must have at least 1 item, got 0");
  EXPECT_EQ(JobError(R"({"job_id": "a", "teacher": "t", "tasks": [{"type": "mmlu"},
                         {"type": "recall"}, {"type": "mmlu", "weight": 2}, {"type": "recall"}]})"),
            "job.json: tasks: must have at most 3 items, got 4");
}

TEST(JsonSchemaTest, ErrorsAreReportedInKeyOrder) {
  // Both values are wrong: "distill" sorts before "mixer", and unknown fields come first.
  EXPECT_EQ(JobError(R"({"mixer": {"type": "x"}, "job_id": "a", "teacher": "t",
                         "distill": {"lr": -1}})"),
            "job.json: distill.lr: must be > 0, got -1");
  EXPECT_EQ(JobError(R"({"zzz": 1, "job_id": "a", "distill": {"lr": -1}})"),
            "job.json: (root): unknown field 'zzz' (allowed: data, distill, job_id, mixer, "
            "tasks, teacher)");
}

TEST(JsonSchemaTest, IntegerAcceptsIntegralFloatsOnly) {
  EXPECT_EQ(Error(R"({"type": "integer"})", "3.0"), "OK");
  EXPECT_EQ(Error(R"({"type": "integer"})", "-7"), "OK");
  EXPECT_EQ(Error(R"({"type": "integer"})", "3.5"), "v.json: (root): must be an integer, got 3.5");
  EXPECT_EQ(Error(R"({"type": "number"})", "3"), "OK");
}

TEST(JsonSchemaTest, StringLengthCountsCodePoints) {
  EXPECT_EQ(Error(R"({"minLength": 1, "maxLength": 1})", "\"\xc3\xa9\""), "OK");  // "é"
  EXPECT_EQ(Error(R"({"maxLength": 2})", "\"\xc3\xa9\xc3\xa9\xc3\xa9\""),
            "v.json: (root): must be at most 2 characters long, got \"\xc3\xa9\xc3\xa9\xc3\xa9\"");
  EXPECT_EQ(JobError(R"({"job_id": "", "teacher": "t"})"),
            "job.json: job_id: must be at least 1 character long, got \"\"");
  EXPECT_EQ(Error(R"({"minLength": 2})", "5"), "OK");  // string keywords ignore other types
}

TEST(JsonSchemaTest, PatternUsesSearchSemantics) {
  EXPECT_EQ(JobError(R"({"job_id": "Run1", "teacher": "t"})"),
            "job.json: job_id: must match pattern '^[a-z][a-z0-9_]*$', got \"Run1\"");
  EXPECT_EQ(Error(R"({"pattern": "b+"})", R"("aabbcc")"), "OK");  // unanchored: search
  EXPECT_EQ(Error(R"({"pattern": "b+"})", R"("aacc")"),
            "v.json: (root): must match pattern 'b+', got \"aacc\"");
  EXPECT_EQ(
      ParseError(R"({"pattern": "a("})")
          .rfind("s.json: schema at #: 'pattern' \"a(\" is not a valid regular expression: ", 0),
      0u);
  // Strings past the limit are refused rather than risking std::regex's per-character
  // recursion.
  const std::string long_string(kMaxPatternInputBytes + 1, 'b');
  EXPECT_EQ(Error(R"({"pattern": "b+"})", "\"" + long_string + "\""),
            "v.json: (root): is too long to check against pattern 'b+' (1025 bytes, at most "
            "1024)");
  EXPECT_EQ(Error(R"({"pattern": "^b+$"})", "\"" + long_string.substr(1) + "\""), "OK");
}

TEST(JsonSchemaTest, UniqueItemsReportsTheFirstRepeat) {
  EXPECT_EQ(
      JobError(R"({"job_id": "a", "teacher": "t",
                         "tasks": [{"type": "mmlu"}, {"type": "recall"}, {"type": "mmlu"}]})"),
      "job.json: tasks: must have unique items, but [0] and [2] are both {\"type\":\"mmlu\"}");
  const std::string schema = R"({"uniqueItems": true})";
  EXPECT_EQ(Error(schema, R"([3, "b", "a", "b", 3.0])"),
            "v.json: (root): must have unique items, but [1] and [3] are both \"b\"");
  EXPECT_EQ(Error(schema, R"([1, 1.0])"),
            "v.json: (root): must have unique items, but [0] and [1] are both 1");
  EXPECT_EQ(Error(schema, R"([1, "1", [1], {"a": 1}, {"a": 2}, null, false, 0])"), "OK");
  EXPECT_EQ(Error(R"({"uniqueItems": false})", "[1, 1]"), "OK");
}

TEST(JsonSchemaTest, OneOfSaysHowManyMatched) {
  const std::string schema = R"({"oneOf": [
      {"type": "object", "required": ["type"], "properties": {"type": {"const": "gla"}}},
      {"type": "object", "required": ["chunk"]}]})";
  EXPECT_EQ(Error(schema, R"({"type": "gla"})"), "OK");
  EXPECT_EQ(Error(schema, R"({"chunk": 64})"), "OK");
  EXPECT_EQ(Error(schema, R"({"type": "gdn"})"),
            "v.json: (root): must match exactly one of 2 alternatives, matched none (first "
            "alternative: type: must be \"gla\", got \"gdn\")");
  EXPECT_EQ(Error(schema, R"({"type": "gla", "chunk": 64})"),
            "v.json: (root): must match exactly one of 2 alternatives, matched 2 (alternatives "
            "0 and 1)");
}

TEST(JsonSchemaTest, AnyOfNeedsOneMatch) {
  const std::string schema = R"({"properties": {"heads": {"anyOf": [
      {"type": "integer", "minimum": 1}, {"const": "auto"}]}}})";
  EXPECT_EQ(Error(schema, R"({"heads": 4})"), "OK");
  EXPECT_EQ(Error(schema, R"({"heads": "auto"})"), "OK");
  EXPECT_EQ(Error(schema, R"({"heads": 0})"),
            "v.json: heads: must match at least one of 2 alternatives, matched none (first "
            "alternative: heads: must be >= 1, got 0)");
}

TEST(JsonSchemaTest, DefaultsAreFilledRecursively) {
  const JsonSchema schema = JobSchema();
  const Json filled = schema.WithDefaults(Json::parse(
      R"({"job_id": "a", "teacher": "t", "mixer": {}, "tasks": [{"type": "mmlu"},
          {"type": "recall", "weight": 3}]})"));
  const Json expected = Json::parse(R"({
    "job_id": "a", "teacher": "t", "data": "data/train",
    "distill": {"lr": 0.001, "steps": 100},
    "mixer": {"type": "gla", "heads": null},
    "tasks": [{"type": "mmlu", "weight": 1}, {"type": "recall", "weight": 3}]})");
  EXPECT_EQ(filled, expected) << filled.dump();
  EXPECT_TRUE(schema.Validate(filled, "filled").ok());
  // Present values are kept; absent objects without a default stay absent.
  const Json kept = schema.WithDefaults(
      Json::parse(R"({"job_id": "a", "teacher": "t", "data": "d", "distill": {"lr": 2}})"));
  EXPECT_EQ(kept, Json::parse(R"({"job_id": "a", "teacher": "t", "data": "d",
                                  "distill": {"lr": 2, "steps": 100}})"))
      << kept.dump();
}

TEST(JsonSchemaTest, DefaultsFollowRefAndTheMatchingOneOfAlternative) {
  auto schema = JsonSchema::Parse(Json::parse(R"({
    "properties": {
      "opt": {"$ref": "#/$defs/opt"},
      "own": {"$ref": "#/$defs/opt", "default": {"beta": 2}},
      "mixer": {"oneOf": [
        {"properties": {"type": {"const": "gla"}, "chunk": {"default": 64}}, "required": ["type"]},
        {"properties": {"type": {"const": "gdn"}, "gate": {"default": true}}, "required": ["type"]}
      ]}
    },
    "$defs": {"opt": {"type": "object", "default": {"beta": 1},
                      "properties": {"beta": {"type": "number"}, "eps": {"default": 1e-8}}}}
  })"),
                                  "s.json");
  ASSERT_TRUE(schema.ok()) << schema.status().message();
  const Json filled = schema->WithDefaults(Json::parse(R"({"mixer": {"type": "gdn"}})"));
  EXPECT_EQ(filled,
            Json::parse(R"({"opt": {"beta": 1, "eps": 1e-8}, "own": {"beta": 2, "eps": 1e-8},
                                    "mixer": {"type": "gdn", "gate": true}})"))
      << filled.dump();
}

TEST(JsonSchemaTest, UnsupportedKeywordIsRejectedAtParse) {
  EXPECT_EQ(ParseError(R"({"properties": {"lr": {"type": "number", "multipleOf": 0.5}}})"),
            "s.json: schema at #/properties/lr: unsupported keyword 'multipleOf'");
  EXPECT_EQ(ParseError(R"({"patternProperties": {}})"),
            "s.json: schema at #: unsupported keyword 'patternProperties'");
  EXPECT_EQ(ParseError(R"({"type": "float"})"),
            "s.json: schema at #: 'type' has unknown type \"float\" (known: object, array, "
            "string, number, integer, boolean, null)");
  EXPECT_EQ(ParseError(R"({"minItems": -1})"),
            "s.json: schema at #: 'minItems' must be a non-negative integer, got -1");
  EXPECT_EQ(ParseError(R"({"items": 3})"),
            "s.json: schema at #/items: a schema must be an object or a boolean, got 3");
  EXPECT_EQ(ParseError(R"({"properties": {"a/b": {"default": 0, "minimum": 1}}})"),
            "s.json: schema at #/properties/a~1b: default 0 is invalid: (root): must be >= 1, "
            "got 0");
  EXPECT_EQ(ParseError(R"({"$id": "x", "$comment": "c", "description": "d", "examples": [1]})"),
            "OK");
}

TEST(JsonSchemaTest, RefToDefsResolves) {
  const std::string schema = R"({"properties": {"a": {"$ref": "#/$defs/pos"}},
                                 "$defs": {"pos": {"type": "integer", "minimum": 1}}})";
  EXPECT_EQ(Error(schema, R"({"a": 2})"), "OK");
  EXPECT_EQ(Error(schema, R"({"a": 0})"), "v.json: a: must be >= 1, got 0");
  EXPECT_EQ(ParseError(R"({"$ref": "#/$defs/nope", "$defs": {}})"),
            "s.json: schema at #: $ref '#/$defs/nope' does not resolve: the root's $defs has no "
            "'nope'");
  EXPECT_EQ(ParseError(R"({"$ref": "other.json#/x"})"),
            "s.json: schema at #: $ref 'other.json#/x' is not supported (only '#/$defs/<name>')");
  EXPECT_EQ(ParseError(R"({"properties": {"a": {"$defs": {}}}})"),
            "s.json: schema at #/properties/a: $defs is only supported at the root ($ref "
            "resolves '#/$defs/<name>' against the root)");
}

TEST(JsonSchemaTest, RecursiveRefThatDescendsIsFine) {
  const std::string tree = R"({"$ref": "#/$defs/node", "$defs": {"node": {"type": "object",
      "additionalProperties": false,
      "properties": {"name": {"type": "string"}, "kids": {"items": {"$ref": "#/$defs/node"}}}}}})";
  EXPECT_EQ(Error(tree, R"({"name": "a", "kids": [{"kids": [{"name": "c"}]}]})"), "OK");
  EXPECT_EQ(Error(tree, R"({"kids": [{"kids": [{"name": 3}]}]})"),
            "v.json: kids[0].kids[0].name: must be a string, got 3");
}

TEST(JsonSchemaTest, RefLoopWithoutDescendingIsRejected) {
  EXPECT_EQ(ParseError(R"({"$defs": {"a": {"$ref": "#/$defs/a"}}})"),
            "s.json: schema at #/$defs/a: $ref/oneOf/anyOf cycle that never descends into the "
            "value: #/$defs/a -> #/$defs/a");
  EXPECT_EQ(ParseError(R"({"$ref": "#/$defs/a", "$defs": {"a": {"anyOf": [{"$ref": "#/$defs/b"}]},
                           "b": {"oneOf": [{"type": "null"}, {"$ref": "#/$defs/a"}]}}})"),
            "s.json: schema at #/$defs/a: $ref/oneOf/anyOf cycle that never descends into the "
            "value: #/$defs/a -> #/$defs/a/anyOf/0 -> #/$defs/b -> #/$defs/b/oneOf/1 -> "
            "#/$defs/a");
  // An object default that re-creates itself would make WithDefaults loop.
  EXPECT_EQ(ParseError(R"({"$defs": {"n": {"type": "object", "default": {},
                           "properties": {"child": {"$ref": "#/$defs/n"}}}}})"),
            "s.json: schema at #/$defs/n/properties/child: object defaults would be filled in "
            "without end (filling each default inserts the next): #/$defs/n/properties/child -> "
            "#/$defs/n/properties/child");
  // The same shape is fine when the default already holds the recursive field.
  EXPECT_EQ(ParseError(R"({"$defs": {"n": {"type": ["object", "null"], "default": {"child": null},
                           "properties": {"child": {"$ref": "#/$defs/n"}}}}})"),
            "OK");
}

TEST(JsonSchemaTest, BooleanSchemas) {
  EXPECT_EQ(Error("true", R"({"anything": [1]})"), "OK");
  EXPECT_EQ(Error(R"({"items": false})", "[]"), "OK");
  EXPECT_EQ(Error(R"({"items": false})", "[1]"), "v.json: [0]: is not allowed here");
  EXPECT_EQ(Error(R"({"additionalProperties": {"type": "integer"}})", R"({"a": 1, "b": "x"})"),
            "v.json: b: must be an integer, got \"x\"");
}

}  // namespace
}  // namespace hyb
