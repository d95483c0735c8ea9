// A cardq producer to copy: build a send request, validate it against the contract's JSON
// Schema, key it by its destination and produce it.
//
//   npm ci && npm run build
//   node dist/producer.js --brokers 127.0.0.1:9092 --bot ops-app --chat oc_5ad573a6411d72b8305fda3a9c1abcef
//
// It validates before producing so that a mistake fails here, in the service, with the
// schema's field path, instead of coming back later as a "rejected" result.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import Ajv2020 from "ajv/dist/2020";
import addFormats from "ajv-formats";
import { Kafka, Partitioners, logLevel } from "kafkajs";

/** Contract v1 (schemas/send-request.v1.json); the worker reads absent and null alike. */
export interface SendRequest {
  version: 1;
  request_id: string;
  idempotency_key?: string;
  backend: "feishu_webhook" | "feishu_message" | "feishu_ephemeral" | "mindoffice_group";
  bot: string;
  operation?: "send" | "reply" | "update" | "delete";
  target?: Record<string, string | boolean>;
  msg_type?: string;
  content?: object | unknown[] | string;
  expires_at?: string;
}

/**
 * The Kafka key: `backend/bot/target`, the string the worker computes itself. One
 * destination on one partition keeps its order and its rate limit exact.
 */
export function destinationKey(r: SendRequest): string {
  const t = (name: string): string => String(r.target?.[name] ?? "");
  const op = r.operation ?? "send";
  let target: string;
  if (r.backend === "feishu_webhook") {
    target = "webhook";
  } else if (r.backend === "feishu_message" && op === "send") {
    target = `${t("receive_id_type")}:${t("receive_id")}`;
  } else if (r.backend === "feishu_ephemeral" && op === "send") {
    const user = ["open_id", "user_id", "email"].find((f) => r.target?.[f] !== undefined);
    target = `chat:${t("chat_id")}/${user}:${t(user ?? "")}`;
  } else if (r.backend === "mindoffice_group") {
    target = `group:${t("group_id")}`;
  } else {
    target = `message:${t("message_id")}`; // reply, update, delete
  }
  return `${r.backend}/${r.bot}/${target}`;
}

/** The request schema compiled by ajv (Draft 2020-12), RFC 3339 dates checked like the worker. */
export function loadValidator(path: string) {
  const ajv = new Ajv2020({ allErrors: true, strict: false });
  addFormats(ajv);
  return ajv.compile<SendRequest>(JSON.parse(readFileSync(path, "utf8")));
}

async function main(): Promise<number> {
  const { values: args } = parseArgs({
    options: {
      brokers: { type: "string", default: "127.0.0.1:9092" },
      topic: { type: "string", default: "cardq.requests" },
      schema: { type: "string", default: "../../schemas/send-request.v1.json" },
      bot: { type: "string", default: "ops-app" },
      chat: { type: "string", default: "" },
      "request-id": { type: "string", default: `ts-example-${Date.now()}` },
      text: { type: "string", default: "**Deployed** from the TypeScript example" },
    },
  });

  const request: SendRequest = {
    version: 1,
    request_id: args["request-id"]!,
    backend: "feishu_message",
    bot: args.bot!,
    target: { receive_id_type: "chat_id", receive_id: args.chat! },
    msg_type: "interactive",
    content: {
      schema: "2.0",
      body: { elements: [{ tag: "markdown", content: args.text! }] },
    },
    expires_at: new Date(Date.now() + 10 * 60_000).toISOString(),
  };

  const validate = loadValidator(args.schema!);
  if (!validate(request)) {
    for (const e of validate.errors ?? []) {
      console.error(`ts-producer: invalid request: ${e.instancePath || "/"}: ${e.message}`);
    }
    return 2;
  }

  const kafka = new Kafka({
    clientId: "cardq-ts-example",
    brokers: args.brokers!.split(","),
    logLevel: logLevel.WARN,
  });
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  try {
    const key = destinationKey(request);
    const [meta] = await producer.send({
      topic: args.topic!,
      acks: -1,
      messages: [{ key, value: JSON.stringify(request) }],
    });
    console.log(
      `sent ${request.request_id} key=${key} partition=${meta.partition} offset=${meta.baseOffset}`,
    );
  } finally {
    await producer.disconnect();
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`ts-producer: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
