package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// guard notify-test sends one sample through each sender and says what
// came of it: exit 0 when every one got it, 1 when one failed.
func TestNotifyTest(t *testing.T) {
	var posts atomic.Int32
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { posts.Add(1) }))
	defer ok.Close()
	gone := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }))
	defer gone.Close()

	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	writeMode(t, good, "[notify.webhook]\nurl = \""+ok.URL+"/hook/token\"\n", 0o600)
	code, stdout, stderr := runGuard("notify-test", "--config", good)
	if want := "webhook (" + ok.URL + "): sent\n"; code != 0 || stdout != want || stderr != "" || posts.Load() != 1 {
		t.Errorf("exit %d, stdout %q, stderr %q, %d posts; want %q", code, stdout, stderr, posts.Load(), want)
	}

	bad := filepath.Join(dir, "bad.toml")
	writeMode(t, bad, "[notify.webhook]\nurl = \""+gone.URL+"/hook/token\"\n", 0o600)
	code, stdout, _ = runGuard("notify-test", "--config", bad)
	if want := "webhook (" + gone.URL + "): failed: POST " + gone.URL + ": 404 Not Found\n"; code != 1 || stdout != want {
		t.Errorf("exit %d, stdout %q, want %q", code, stdout, want)
	}

	none := filepath.Join(dir, "none.toml")
	writeMode(t, none, "mode = \"observe\"\n", 0o600)
	code, _, stderr = runGuard("notify-test", "--config", none)
	if code != 1 || !strings.Contains(stderr, "no sender is configured") {
		t.Errorf("no sender: exit %d, stderr %q", code, stderr)
	}
}

// check-config names the file, the line and the key of a [notify]
// problem.
func TestCheckConfigNotify(t *testing.T) {
	file, code, stdout, stderr := checkConfig(t, `[notify.webhook]
url = "hooks.example.com"
body_template = '{"text": {{.Title}}}'
[notify.email]
server = "smtp.example.com:587"
from = "astguard@example.com"
to = ["ok@example.com", "bad"]
`)
	want := "config is invalid:\n" +
		file + `:2: notify.webhook.url: "hooks.example.com" is not an http:// or https:// URL` + "\n" +
		file + `:3: notify.webhook.body_template: the template does not write valid JSON (put each string value between quotes: "{{.Title}}")` + "\n" +
		file + `:7: notify.email.to[1]: "bad" is not a mail address` + "\n"
	if code != 1 || stdout != "" || stderr != want {
		t.Errorf("exit %d, stdout %q\nstderr\n%s\nwant\n%s", code, stdout, stderr, want)
	}
}

// guard run checks the files the notifiers' secrets come from as it
// checks the AMI secret's.
func TestRunChecksNotifySecretFiles(t *testing.T) {
	cfg, _, _ := guardFiles(t, 0o600, 0o600)
	key := filepath.Join(filepath.Dir(cfg), "hmac")
	writeMode(t, key, "k\n", 0o644)
	data, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	writeMode(t, cfg, string(data)+"\n[notify.webhook]\nurl = \"http://127.0.0.1:9/x\"\nhmac_key_file = \"hmac\"\n", 0o600)
	t.Setenv("ASTGUARD_WEBHOOK_HMAC_KEY", "")
	code, _, stderr := runGuard("run", "--config", cfg)
	if code != 1 || !strings.Contains(stderr, "run: refusing to start: unsafe file: readable by every user: "+key+": mode 0644") {
		t.Errorf("exit %d, stderr %s", code, stderr)
	}
}
