// A cardq producer to copy: build a send request, validate it against the contract's JSON
// Schema, key it by its destination and produce it.
//
//   npm ci && npm run build
//   node dist/producer.js --brokers 127.0.0.1:9092 --bot ops-app --chat oc_5ad573a6411d72b8305fda3a9c1abcef
//
// It validates before producing so that a mistake fails here, in the service, with the
// schema's field path, instead of coming back later as a "rejected" result.
import { parseArgs } from "node:util";
import { Kafka, Partitioners, logLevel } from "kafkajs";
import { type SendRequest, destinationKey, loadValidator } from "./request";

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
