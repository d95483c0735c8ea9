// The request type, its Kafka key and its validator: what a producer needs from the contract.
import { readFileSync } from "node:fs";
import Ajv2020 from "ajv/dist/2020";
import addFormats from "ajv-formats";

/** Contract v1 (schemas/send-request.v1.json); the worker reads absent and null alike. */
export interface SendRequest {
  version: 1;
  request_id: string;
  idempotency_key?: string;
  backend: "feishu_webhook" | "feishu_message" | "feishu_ephemeral" | "mindoffice_group";
  bot: string;
  operation?: "send" | "reply" | "update" | "delete" | "recall";
  target?: Record<string, string | boolean>;
  msg_type?: string;
  content?: object | unknown[] | string;
  expires_at?: string;
  subject_key?: string;
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
  } else if (r.backend === "feishu_message" && (op === "send" || op === "recall")) {
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

