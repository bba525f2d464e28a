package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// guard demo tells the whole story and ends with what it did.
func TestDemo(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	if code := run([]string{"demo", "--speed", "8"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"127.0.0.2", "127.0.0.5", "sip.conf:           rewritten by UpdateConfig", "pjsip.conf:         rewritten by UpdateConfig"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "127.0.0.3") {
		t.Errorf("the legitimate user's address was blocked:\n%s", out)
	}
	log := stderr.String()
	for _, want := range []string{"fraud alert", "action=hangup", "action=rotate_secret", "action=block_ip"} {
		if !strings.Contains(log, want) {
			t.Errorf("the story lacks %q", want)
		}
	}
	if strings.Contains(log, "guardpass") {
		t.Error("the AMI secret appears in the log")
	}
}

// guard bans reads the state file when no guard runs.
func TestBansWithoutDaemon(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "bans.json")
	now := time.Now().UTC().Truncate(time.Second)
	doc := map[string]any{"version": 1, "bans": []map[string]any{{
		"addr": "127.0.0.2", "since": now, "until": now.Add(time.Hour), "reason": "call_rate critical: 5 calls started", "extension": "SIP/200",
	}}}
	raw, _ := json.Marshal(doc)
	if err := os.WriteFile(state, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "guard.toml")
	toml := fmt.Sprintf("[response]\nstate_file = %q\nsecrets_file = %q\nadmin_socket = %q\n", state, filepath.Join(dir, "s.jsonl"), filepath.Join(dir, "admin.sock"))
	if err := os.WriteFile(cfg, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"bans", "--config", cfg}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "127.0.0.2") || !strings.Contains(stdout.String(), "SIP/200") ||
		!strings.Contains(stderr.String(), "from the state file (no guard running)") {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
}
