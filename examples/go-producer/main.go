// Command go-producer is a cardq producer to copy: it builds a send request, validates it
// against the contract's JSON Schema, keys it by its destination and produces it.
//
//	go run . -brokers 127.0.0.1:9092 -bot ops-app -chat oc_5ad573a6411d72b8305fda3a9c1abcef
//
// It validates before producing so that a mistake fails here, in the service, with the
// schema's field path, instead of coming back later as a "rejected" result.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kversion"
)

// SendRequest is contract v1 (schemas/send-request.v1.json). Optional fields are omitted
// when empty: the worker reads an absent field and null alike.
type SendRequest struct {
	Version        int            `json:"version"`
	RequestID      string         `json:"request_id"`
	IdempotencyKey string         `json:"idempotency_key,omitempty"`
	Backend        string         `json:"backend"`
	Bot            string         `json:"bot"`
	Operation      string         `json:"operation,omitempty"`
	Target         map[string]any `json:"target,omitempty"`
	MsgType        string         `json:"msg_type,omitempty"`
	Content        any            `json:"content,omitempty"`
	ExpiresAt      string         `json:"expires_at,omitempty"`
	SubjectKey     string         `json:"subject_key,omitempty"`
}

// DestinationKey is the Kafka key: `backend/bot/target`, the string the worker computes
// itself. One destination on one partition keeps its order and its rate limit exact.
func DestinationKey(r SendRequest) string {
	t := func(name string) string { s, _ := r.Target[name].(string); return s }
	op := r.Operation
	if op == "" {
		op = "send"
	}
	var target string
	switch {
	case r.Backend == "feishu_webhook":
		target = "webhook"
	case r.Backend == "feishu_message" && (op == "send" || op == "recall"):
		target = t("receive_id_type") + ":" + t("receive_id")
	case r.Backend == "feishu_ephemeral" && op == "send":
		for _, field := range []string{"open_id", "user_id", "email"} {
			if v := t(field); v != "" {
				target = "chat:" + t("chat_id") + "/" + field + ":" + v
				break
			}
		}
	case r.Backend == "mindoffice_group":
		target = "group:" + t("group_id")
	default: // reply, update, delete
		target = "message:" + t("message_id")
	}
	return r.Backend + "/" + r.Bot + "/" + target
}

// LoadValidator compiles the request schema, with format assertion on (RFC 3339 dates are
// then checked as the worker checks them).
func LoadValidator(path string) (*jsonschema.Schema, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	const id = "urn:cardq:schema:send-request:v1"
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource(id, doc); err != nil {
		return nil, err
	}
	return c.Compile(id)
}

func main() { os.Exit(run()) }

// run returns the exit code: 0 sent, 1 a failure, 2 a bad request or option. Returning
// rather than calling os.Exit lets the deferred calls run (Close flushes and disconnects).
func run() int {
	brokers := flag.String("brokers", "127.0.0.1:9092", "Kafka bootstrap servers, comma-separated")
	topic := flag.String("topic", "cardq.requests", "the requests topic")
	schema := flag.String("schema", "../../schemas/send-request.v1.json", "path to send-request.v1.json")
	bot := flag.String("bot", "ops-app", "a feishu_message bot configured in the worker")
	chat := flag.String("chat", "", "the Feishu chat_id to send the card to (required)")
	requestID := flag.String("request-id", fmt.Sprintf("go-example-%d", time.Now().UnixNano()), "request id")
	maxVersion := flag.String("max-kafka-version", "", "cap the protocol at this Kafka release (e.g. 3.9.0) for brokers that refuse newer requests")
	text := flag.String("text", "**Deployed** from the Go example", "the card's markdown")
	flag.Parse()

	request := SendRequest{
		Version:   1,
		RequestID: *requestID,
		Backend:   "feishu_message",
		Bot:       *bot,
		Target:    map[string]any{"receive_id_type": "chat_id", "receive_id": *chat},
		MsgType:   "interactive",
		Content: map[string]any{
			"schema": "2.0",
			"body": map[string]any{
				"elements": []any{map[string]any{"tag": "markdown", "content": *text}},
			},
		},
		ExpiresAt: time.Now().Add(10 * time.Minute).UTC().Format(time.RFC3339),
	}
	value, err := json.Marshal(request)
	if err != nil {
		return report(1, "encode: %v", err)
	}

	validator, err := LoadValidator(*schema)
	if err != nil {
		return report(2, "schema: %v", err)
	}
	instance, err := jsonschema.UnmarshalJSON(bytes.NewReader(value))
	if err != nil {
		return report(1, "decode: %v", err)
	}
	if err := validator.Validate(instance); err != nil {
		return report(2, "invalid request: %v", err) // e.g. "at '/target/receive_id': minLength: …"
	}

	options := []kgo.Opt{
		kgo.SeedBrokers(strings.Split(*brokers, ",")...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
	}
	if *maxVersion != "" {
		// franz-go speaks the newest protocol; some Kafka-compatible brokers (Tansu 0.6,
		// which the cardq tests use) close the connection on its newest ApiVersions request.
		versions := kversion.FromString(*maxVersion)
		if versions == nil {
			return report(2, "-max-kafka-version: unknown Kafka version %q", *maxVersion)
		}
		options = append(options, kgo.MaxVersions(versions))
	}
	client, err := kgo.NewClient(options...)
	if err != nil {
		return report(1, "kafka: %v", err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := DestinationKey(request)
	record := &kgo.Record{Topic: *topic, Key: []byte(key), Value: value}
	if err := client.ProduceSync(ctx, record).FirstErr(); err != nil {
		return report(1, "produce: %v", err)
	}
	fmt.Printf("sent %s key=%s partition=%d offset=%d\n", request.RequestID, key, record.Partition, record.Offset)
	return 0
}

func report(code int, format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "go-producer: "+format+"\n", args...)
	return code
}
