// Compares destinationKey with the key the worker computes for every valid example in
// schemas/examples/valid, and checks each example against the schema with ajv.
// tests/test_producer_examples.py writes the worker's keys to a JSON file and runs
//   node dist/check-keys.js KEYS.json SCHEMA.json
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { type SendRequest, destinationKey, loadValidator } from "./request";

const [keysPath, schemaPath] = process.argv.slice(2);
const expected: Record<string, string> = JSON.parse(readFileSync(keysPath, "utf8"));
const validate = loadValidator(schemaPath);
let failures = 0;
for (const [file, want] of Object.entries(expected)) {
  const request: SendRequest = JSON.parse(readFileSync(file, "utf8"));
  const got = destinationKey(request);
  if (got !== want) {
    failures += 1;
    console.log(`${basename(file)}: key ${got}, the worker says ${want}`);
  }
  if (!validate(request)) {
    failures += 1;
    console.log(`${basename(file)}: ajv refuses it: ${JSON.stringify(validate.errors)}`);
  }
}
console.log(`${Object.keys(expected).length} examples checked, ${failures} problems`);
process.exit(failures === 0 ? 0 : 1);
