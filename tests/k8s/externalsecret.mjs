// Validates ExternalSecret objects (a JSON array on stdin) with the schema validator that
// @kubernetes-models/external-secrets generates from the external-secrets CRDs; prints a
// JSON array with one error message per object ("" when valid). Run by check_manifests.py.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import path from "node:path";

const root = path.join(process.env.NODE_PATH, "@kubernetes-models/external-secrets");
const { ExternalSecret } = await import(pathToFileURL(path.join(root, "external-secrets.io/v1/ExternalSecret.js")));
const docs = JSON.parse(readFileSync(0, "utf8"));
const out = docs.map((d) => {
  if (d.apiVersion !== ExternalSecret.apiVersion) return `apiVersion ${d.apiVersion}, expected ${ExternalSecret.apiVersion}`;
  try {
    new ExternalSecret(d).validate();
    return "";
  } catch (e) {
    return String(e.message);
  }
});
process.stdout.write(JSON.stringify(out));
