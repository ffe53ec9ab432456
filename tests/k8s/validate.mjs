// Validates rendered Kubernetes manifests (YAML, `kubectl kustomize` output) strictly: a field
// the schema does not know (a misspelt `livenessProbe`, a field at the wrong level) is an error,
// as with `kubectl apply --validate=strict`.
//
// Built-in kinds: the Kubernetes OpenAPI schemas compiled in the npm package kubernetes-models.
// Besides the schema's own rules (types, required fields, enums), unknown fields are found by
// watching which properties the compiled validator reads: a validator reads every property its
// schema defines and every key of a free-form map, so a key it never reads is unknown to the
// schema.
//
// Custom resources: the openAPIV3Schema of their CustomResourceDefinition, checked into
// schemas/ (schemas/README.md says where each comes from), compiled with ajv under the API
// server's rules for structural schemas: an object field that the schema does not declare is
// unknown (the server would prune it; strict field validation rejects it) unless the schema says
// x-kubernetes-preserve-unknown-fields; x-kubernetes-int-or-string, and x-kubernetes-list-type
// set and map (unique items, unique keys) are enforced; a CRD that uses a rule this script cannot
// enforce (CEL x-kubernetes-validations, embedded resources) is refused rather than half
// checked. A custom resource's metadata, and the Kubernetes objects it embeds (an MPIJob's pod
// templates, EMBEDDED below), are validated with kubernetes-models as well.
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
const Ajv = require("ajv");
const addFormats = require("ajv-formats");
const modelsDir = path.join(here, "node_modules", "kubernetes-models");

// Kubernetes types inside custom resources, by the path to them ("*": every key or item), also
// validated with kubernetes-models.
const EMBEDDED = {
  "kubeflow.org/v2beta1/MPIJob": [
    { path: ["spec", "mpiReplicaSpecs", "*", "template"], type: "IoK8sApiCoreV1PodTemplateSpec" },
  ],
};

// The compiled schema validator of apiVersion/kind, or null when kubernetes-models has none.
function validatorFor(apiVersion, kind) {
  const modelFile = path.join(modelsDir, ...apiVersion.split("/"), `${kind}.js`);
  if (!fs.existsSync(modelFile)) return null;
  const m = fs.readFileSync(modelFile, "utf8").match(/_schemas\/(IoK8s\w+)\.js/);
  if (!m) return null;
  return require(path.join(modelsDir, "_schemas", `${m[1]}.js`)).validate;
}

// The compiled validator of a kubernetes-models type (IoK8sApiCoreV1PodTemplateSpec, ...).
function typeValidator(type) {
  const dir = type.startsWith("IoK8sApimachinery")
    ? path.join(here, "node_modules", "@kubernetes-models", "apimachinery")
    : modelsDir;
  return require(path.join(dir, "_schemas", `${type}.js`)).validate;
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

// Errors of `value` (found at JSON pointer `where` in its object) under a kubernetes-models
// validator, unknown fields included, as "POINTER: message".
function strictErrors(validate, value, where) {
  const seen = new Set();
  if (!validate(track(value, "", seen))) {
    return validate.errors.map((e) => `${`${where}${e.instancePath}` || "/"}: ` +
      (e.message ?? `${e.keyword} ${JSON.stringify(e.params ?? {})}`));
  }
  const unknown = [];
  unknownFields(value, "", seen, unknown);
  return unknown.map((u) => `${where}${u}: field not in the schema`);
}

// --- Custom resources -------------------------------------------------------------------------

const ANNOTATIONS = new Set(["x-kubernetes-list-map-keys", "x-kubernetes-map-type",
                             "x-kubernetes-preserve-unknown-fields"]);

// A CRD's structural schema as a JSON schema for ajv: objects closed unless the schema preserves
// unknown fields. `where` names the place for errors about unsupported rules; `place` is "root"
// for the openAPIV3Schema itself and "metadata" for its metadata field.
function toJsonSchema(s, where, place = "") {
  const out = {};
  for (const [k, v] of Object.entries(s)) {
    if (k.startsWith("x-kubernetes-") && !ANNOTATIONS.has(k) &&
        k !== "x-kubernetes-int-or-string" && k !== "x-kubernetes-list-type") {
      throw new Error(`${where}: ${k} is not enforced by validate.mjs`);
    }
    if (k === "properties") {
      out.properties = {};
      for (const [name, p] of Object.entries(v)) {
        const inner = place === "root" && name === "metadata" ? "metadata" : "";
        out.properties[name] = toJsonSchema(p, `${where}.${name}`, inner);
      }
    } else if (k === "items" || (k === "additionalProperties" && typeof v === "object")) {
      out[k] = toJsonSchema(v, `${where}[]`);
    } else if (["anyOf", "allOf", "oneOf"].includes(k)) {
      out[k] = v.map((x) => toJsonSchema(x, where));
    } else if (k === "not") {
      out[k] = toJsonSchema(v, where);
    } else {
      out[k] = v;
    }
  }
  // The object metadata at the root is the API server's to check (kubernetes-models here).
  if (out.type === "object" && out.additionalProperties === undefined && place !== "metadata" &&
      !out["x-kubernetes-preserve-unknown-fields"]) {
    out.additionalProperties = false;
  }
  return out;
}

function newAjv() {
  const ajv = new Ajv({ allErrors: true, strictTypes: false, strictTuples: false });
  addFormats(ajv, ["date-time"]);
  ajv.addFormat("int32", {
    type: "number",
    validate: (n) => Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31,
  });
  ajv.addFormat("int64", { type: "number", validate: (n) => Number.isInteger(n) });
  for (const k of ANNOTATIONS) ajv.addKeyword({ keyword: k });
  ajv.addKeyword({
    keyword: "x-kubernetes-int-or-string",
    validate: function intOrString(on, data) {
      if (!on || typeof data === "string" || Number.isInteger(data)) return true;
      intOrString.errors = [{ keyword: "x-kubernetes-int-or-string",
                              message: "must be an integer or a string", params: {} }];
      return false;
    },
  });
  ajv.addKeyword({
    keyword: "x-kubernetes-list-type",
    validate: function listType(type, data, parentSchema) {
      if (!Array.isArray(data) || type === "atomic") return true;
      const keys = type === "map" ? parentSchema["x-kubernetes-list-map-keys"] ?? [] : null;
      // A key left out takes its default (as the API server defaults before it validates).
      const defaults = parentSchema.items?.properties ?? {};
      const seen = new Set();
      for (const item of data) {
        const id = JSON.stringify(keys ? keys.map((k) => item?.[k] ?? defaults[k]?.default) : item);
        if (seen.has(id)) {
          const what = keys ? `key (${keys.join(", ")})` : "item";
          listType.errors = [{ keyword: "x-kubernetes-list-type", params: {},
                               message: `duplicate ${what} ${id} in a list of type ${type}` }];
          return false;
        }
        seen.add(id);
      }
      return true;
    },
  });
  return ajv;
}

// "group/version/Kind" -> { validate(), file } for every served version of every CRD in
// schemas/; a schema is compiled when an object of its kind first needs it.
function loadCrds() {
  const dir = path.join(here, "schemas");
  const crds = {};
  if (!fs.existsSync(dir)) return crds;
  let ajv = null;
  for (const f of fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort()) {
    for (const crd of yaml.loadAll(fs.readFileSync(path.join(dir, f), "utf8"))) {
      if (crd?.kind !== "CustomResourceDefinition") continue;
      for (const v of crd.spec.versions.filter((v) => v.served)) {
        let compiled = null;
        const validate = (doc) => {
          if (!compiled) {
            const where = `schemas/${f}: ${crd.spec.names.kind} ${v.name}`;
            ajv ??= newAjv();
            try {
              compiled = ajv.compile(toJsonSchema(v.schema.openAPIV3Schema,
                                                  `${where}: openAPIV3Schema`, "root"));
            } catch (e) {
              throw new Error(`${where}: ${e.message}`);
            }
          }
          return compiled(doc) ? [] : compiled.errors.map(ajvMessage);
        };
        crds[`${crd.spec.group}/${v.name}/${crd.spec.names.kind}`] = { validate, file: f };
      }
    }
  }
  return crds;
}

function ajvMessage(e) {
  if (e.keyword === "additionalProperties") {
    return `${e.instancePath}/${e.params.additionalProperty}: field not in the schema`;
  }
  const allowed = e.keyword === "enum" ? ` (${e.params.allowedValues.join(", ")})` : "";
  return `${e.instancePath || "/"}: ${e.message}${allowed}`;
}

// Values at `p` (keys, "*" for all) inside `value`, with their JSON pointers.
function at(value, p, where = "") {
  if (p.length === 0) return [[value, where]];
  if (value === null || typeof value !== "object") return [];
  const keys = p[0] === "*" ? Object.keys(value) : [p[0]];
  return keys.filter((k) => value[k] !== undefined)
    .flatMap((k) => at(value[k], p.slice(1), `${where}/${k}`));
}

function customResourceErrors(crd, doc) {
  const errors = crd.validate(doc);
  if (doc.metadata !== undefined) {
    errors.push(...strictErrors(typeValidator("IoK8sApimachineryPkgApisMetaV1ObjectMeta"),
                                doc.metadata, "/metadata"));
  }
  for (const { path: p, type } of EMBEDDED[`${doc.apiVersion}/${doc.kind}`] ?? []) {
    for (const [value, where] of at(doc, p)) {
      errors.push(...strictErrors(typeValidator(type), value, where).map((e) => `${e} (${type})`));
    }
  }
  return errors;
}

// --- Main -------------------------------------------------------------------------------------

const args = process.argv.slice(2);
if (args.length < 1 || args[0].startsWith("--")) {
  console.error("usage: node validate.mjs RENDERED.yaml [--json OUT.json]");
  process.exit(2);
}
const file = args[0];
const jsonOut = args.indexOf("--json") >= 0 ? args[args.indexOf("--json") + 1] : null;
const docs = yaml.loadAll(fs.readFileSync(file, "utf8")).filter((d) => d !== null);
const crds = loadCrds();
const errors = [];
for (const doc of docs) {
  const name = `${doc.kind}/${doc.metadata?.name ?? "?"}`;
  const crd = crds[`${doc.apiVersion}/${doc.kind}`];
  if (crd) {
    for (const e of customResourceErrors(crd, doc)) errors.push(`${file}: ${name}: ${e}`);
    continue;
  }
  const validate = validatorFor(doc.apiVersion ?? "", doc.kind ?? "");
  if (!validate) {
    errors.push(`${file}: ${name}: no schema for apiVersion '${doc.apiVersion}' kind ` +
                `'${doc.kind}' (neither in kubernetes-models nor a CRD in schemas/)`);
    continue;
  }
  for (const e of strictErrors(validate, doc, "")) errors.push(`${file}: ${name}: ${e}`);
}
if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify(docs, null, 1));
for (const e of errors) console.log(e);
console.log(`${file}: ${docs.length} objects, ${errors.length} errors`);
process.exit(errors.length ? 1 : 0);
