// Parse docs/asyncapi.yaml with the official AsyncAPI parser and print every diagnostic.
// Exit 0 when the parser reports no error, 1 otherwise. tests/test_asyncapi.py runs it.
//
// The contract's dead-letter schema refers to the result schema by its $id
// (urn:cardq:schema:result:v1), as JSON Schema allows; a resolver maps those ids to the
// files in schemas/ so the parser can follow them.
import { readFile } from "node:fs/promises";
import path from "node:path";
import { Parser, fromFile } from "@asyncapi/parser";

const [docPath, schemasDir] = process.argv.slice(2).map((p) => path.resolve(p));
if (!docPath || !schemasDir) {
  console.error("usage: node check.mjs DOCUMENT SCHEMAS_DIR");
  process.exit(2);
}

const urnResolver = {
  schema: "urn",
  read: async (uri) => {
    const match = /^urn:cardq:schema:([a-z-]+):v(\d+)$/.exec(uri.toString());
    if (!match) throw new Error(`unknown schema id ${uri}`);
    return readFile(path.join(schemasDir, `${match[1]}.v${match[2]}.json`), "utf8");
  },
};

const parser = new Parser({ __unstable: { resolver: { resolvers: [urnResolver] } } });
const { document, diagnostics } = await fromFile(parser, docPath).parse();
const names = ["error", "warning", "info", "hint"];
let errors = 0;
for (const d of diagnostics) {
  if (d.severity === 0) errors += 1;
  console.log(`${names[d.severity] ?? d.severity}: ${d.code}: ${d.message} at /${d.path.join("/")}`);
}
if (document === undefined || errors > 0) {
  console.log(`FAILED: ${errors} error(s)`);
  process.exit(1);
}
const channels = document.channels().all().map((c) => `${c.id()}=${c.address()}`);
// Show that the payloads were resolved from schemas/, down to the $id reference.
for (const message of document.allMessages().all()) {
  const payload = message.payload();
  const required = payload?.required() ?? [];
  console.log(`message ${message.id()}: payload "${payload?.title()}" requires ${required.join(",")}`);
}
const letter = document.allMessages().get("deadLetter");
const nested = letter?.payload()?.properties()?.result;
console.log(`deadLetter result: "${nested?.title()}" requires ${(nested?.required() ?? []).join(",")}`);
console.log(`OK asyncapi ${document.version()}: channels ${channels.join(", ")}`);
