// Validates rendered Kubernetes manifests (YAML, `kubectl kustomize` output) against the
// Kubernetes OpenAPI schemas compiled in the npm package kubernetes-models, strictly: besides
// the schema's own rules (types, required fields, enums), a field the schema does not know (a
// misspelt `livenessProbe`, a field at the wrong level) is an error, which the schemas alone
// accept. The strictness comes from watching which properties the compiled validator reads: a
// validator reads every property its schema defines and every key of a free-form map, so a key
// it never reads is unknown to the schema.
//
//   node validate.mjs RENDERED.yaml [--json OUT.json]
// Exit 0 when every object validates; otherwise one line per error and exit 1. --json writes the
// objects as a JSON array (for check_manifests.py).
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "package.json"));
const yaml = require("js-yaml");
const modelsDir = path.join(here, "node_modules", "kubernetes-models");

// The compiled schema validator of apiVersion/kind, or null when kubernetes-models has none.
function validatorFor(apiVersion, kind) {
  const modelFile = path.join(modelsDir, ...apiVersion.split("/"), `${kind}.js`);
  if (!fs.existsSync(modelFile)) return null;
  const m = fs.readFileSync(modelFile, "utf8").match(/_schemas\/(IoK8s\w+)\.js/);
  if (!m) return null;
  return require(path.join(modelsDir, "_schemas", `${m[1]}.js`)).validate;
}

function track(value, where, seen) {
  if (value === null || typeof value !== "object") return value;
  return new Proxy(value, {
    get(target, key, receiver) {
      const v = Reflect.get(target, key, receiver);
      if (typeof key !== "string") return v;
      seen.add(`${where}/${key}`);
      return track(v, `${where}/${key}`, seen);
    },
  });
}

function unknownFields(value, where, seen, out) {
  if (value === null || typeof value !== "object") return;
  for (const key of Object.keys(value)) {
    const p = `${where}/${key}`;
    if (!seen.has(p)) out.push(p);
    else unknownFields(value[key], p, seen, out);
  }
}

const args = process.argv.slice(2);
if (args.length < 1 || args[0].startsWith("--")) {
  console.error("usage: node validate.mjs RENDERED.yaml [--json OUT.json]");
  process.exit(2);
}
const file = args[0];
const jsonOut = args.indexOf("--json") >= 0 ? args[args.indexOf("--json") + 1] : null;
const docs = yaml.loadAll(fs.readFileSync(file, "utf8")).filter((d) => d !== null);
const errors = [];
for (const doc of docs) {
  const name = `${doc.kind}/${doc.metadata?.name ?? "?"}`;
  const validate = validatorFor(doc.apiVersion ?? "", doc.kind ?? "");
  if (!validate) {
    errors.push(`${file}: ${name}: no schema for apiVersion '${doc.apiVersion}' kind '${doc.kind}'`);
    continue;
  }
  const seen = new Set();
  if (!validate(track(doc, "", seen))) {
    for (const e of validate.errors) {
      errors.push(`${file}: ${name}: ${e.instancePath || "/"}: ` +
                  (e.message ?? `${e.keyword} ${JSON.stringify(e.params ?? {})}`));
    }
    continue;
  }
  const unknown = [];
  unknownFields(doc, "", seen, unknown);
  for (const u of unknown) errors.push(`${file}: ${name}: ${u}: field not in the schema`);
}
if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify(docs, null, 1));
for (const e of errors) console.log(e);
console.log(`${file}: ${docs.length} objects, ${errors.length} errors`);
process.exit(errors.length ? 1 : 0);
