package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// TestDestinationKeyMatchesTheWorker compares DestinationKey with the key the worker computes
// for every valid example in schemas/examples/valid. The expected keys come from the worker
// itself: tests/test_producer_examples.py writes them to $CARDQ_EXPECTED_KEYS.
func TestDestinationKeyMatchesTheWorker(t *testing.T) {
	path := os.Getenv("CARDQ_EXPECTED_KEYS")
	if path == "" {
		t.Skip("CARDQ_EXPECTED_KEYS not set (tests/test_producer_examples.py sets it)")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var expected map[string]string
	if err := json.Unmarshal(raw, &expected); err != nil {
		t.Fatal(err)
	}
	validator, err := LoadValidator("../../schemas/send-request.v1.json")
	if err != nil {
		t.Fatal(err)
	}
	for file, want := range expected {
		body, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var request SendRequest
		if err := json.Unmarshal(body, &request); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if got := DestinationKey(request); got != want {
			t.Errorf("%s: key %q, the worker says %q", filepath.Base(file), got, want)
		}
		// What the struct encodes back must still pass the schema.
		value, _ := json.Marshal(request)
		var instance any
		_ = json.Unmarshal(value, &instance)
		if err := validator.Validate(instance); err != nil {
			t.Errorf("%s: re-encoded request fails the schema: %v", filepath.Base(file), err)
		}
	}
}
