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

	"github.com/astguard/astguard/internal/config"
)

// writeMode writes content to path with exactly mode (past the umask).
func writeMode(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// useInstalledConfig points the installed configuration's path at path for
// the test.
func useInstalledConfig(t *testing.T, path string) {
	t.Helper()
	old := installedConfig
	installedConfig = path
	t.Cleanup(func() { installedConfig = old })
}

func runGuard(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// A plain `guard run` reads the installed configuration, as the README's
// Install section has it.
func TestRunReadsInstalledConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")
	useInstalledConfig(t, path)
	code, _, stderr := runGuard("run")
	if code != 1 || !strings.Contains(stderr, "config is invalid:\nopen "+path+": no such file or directory") {
		t.Fatalf("no installed config: exit %d, stderr %q", code, stderr)
	}
	writeMode(t, path, "[ami]\nfoo = 1\n", 0o600)
	code, _, stderr = runGuard("run")
	if code != 1 || stderr != "config is invalid:\n"+path+":2: unknown key ami.foo\n" {
		t.Fatalf("bad installed config: exit %d, stderr %q", code, stderr)
	}
	if code, _, stderr := runGuard("run", "extra"); code != 2 || !strings.Contains(stderr, "usage: guard run [--config FILE]") {
		t.Fatalf("an argument: exit %d, stderr %q", code, stderr)
	}
}

// guardFiles writes a configuration whose AMI secret comes from a file, with
// the given modes, and a secrets file others can read: a guard that gets
// past the checks of its configuration and AMI secret stops at once on that
// one, before it dials anything.
func guardFiles(t *testing.T, configMode, secretMode os.FileMode) (cfgPath, secretPath, secretsPath string) {
	t.Helper()
	t.Setenv(config.SecretEnv, "")
	dir := t.TempDir()
	secretPath = filepath.Join(dir, "ami-secret")
	writeMode(t, secretPath, "guardpass\n", secretMode)
	secretsPath = filepath.Join(dir, "secrets.jsonl")
	writeMode(t, secretsPath, "", 0o644)
	cfgPath = filepath.Join(dir, "config.toml")
	writeMode(t, cfgPath, fmt.Sprintf(`[ami]
secret_file = "ami-secret"
[response]
firewall = "dry-run"
state_file = %q
secrets_file = %q
admin_socket = %q
`, filepath.Join(dir, "bans.json"), secretsPath, filepath.Join(dir, "admin.sock")), configMode)
	return cfgPath, secretPath, secretsPath
}

// The configuration and the AMI secret file readable by every user are
// refused at start with the command that fixes them; --allow-shared-files
// lets exactly that pass (a container mount), never a file others can
// write.
func TestRunRefusesSharedFiles(t *testing.T) {
	// What guard run says once it got past the files this test is about.
	const nextCheck = "response.secrets_file: unsafe file: "
	hint := "run: on a container mount whose mode cannot be changed, start with --allow-shared-files\n"

	cfg, _, _ := guardFiles(t, 0o644, 0o600)
	code, _, stderr := runGuard("run", "--config", cfg)
	want := "run: refusing to start: unsafe file: readable by every user: " + cfg + ": mode 0644; run: chmod o-r " + cfg +
		" (0600, or 0640 to share it with a group)\n" + hint
	if code != 1 || stderr != want {
		t.Errorf("config 0644: exit %d, stderr\n%s\nwant\n%s", code, stderr, want)
	}
	code, _, stderr = runGuard("run", "--config", cfg, "--allow-shared-files")
	if code != 1 || !strings.Contains(stderr, nextCheck) {
		t.Errorf("config 0644, allowed: exit %d, stderr %s; want it past the file checks", code, stderr)
	}
	if !hasLog(t, stderr, "file readable by every user, accepted (--allow-shared-files)", "file", cfg) {
		t.Errorf("no warning for the shared config: %s", stderr)
	}

	cfg, secret, _ := guardFiles(t, 0o640, 0o644)
	code, _, stderr = runGuard("run", "--config", cfg)
	want = "run: refusing to start: unsafe file: readable by every user: " + secret + ": mode 0644; run: chmod o-r " + secret +
		" (0600, or 0640 to share it with a group)\n" + hint
	if code != 1 || stderr != want {
		t.Errorf("secret 0644: exit %d, stderr\n%s\nwant\n%s", code, stderr, want)
	}
	code, _, stderr = runGuard("run", "--config", cfg, "--allow-shared-files")
	if code != 1 || !strings.Contains(stderr, nextCheck) || !hasLog(t, stderr, "file readable by every user, accepted (--allow-shared-files)", "file", secret) {
		t.Errorf("secret 0644, allowed: exit %d, stderr %s; want it past the file checks, with a warning", code, stderr)
	}

	// Writable by others: never.
	for _, args := range [][]string{{"run", "--config", ""}, {"run", "--config", "", "--allow-shared-files"}} {
		cfg, _, _ := guardFiles(t, 0o666, 0o600)
		args[2] = cfg
		code, _, stderr := runGuard(args...)
		want := "run: refusing to start: unsafe file: " + cfg + ": mode 0666: writable by group or others; run: chmod go-w " + cfg + "\n"
		if code != 1 || stderr != want {
			t.Errorf("guard %v: exit %d, stderr\n%s\nwant\n%s", args, code, stderr, want)
		}
	}

	// Private files pass without the flag.
	cfg, _, _ = guardFiles(t, 0o600, 0o600)
	if code, _, stderr := runGuard("run", "--config", cfg); code != 1 || !strings.Contains(stderr, nextCheck) {
		t.Errorf("private files: exit %d, stderr %s; want it past the file checks", code, stderr)
	}
}

// A database password file others can read is refused at start as the AMI
// secret file is; its environment variable, when set, replaces it.
func TestRunRefusesSharedPasswordFile(t *testing.T) {
	const nextCheck = "response.secrets_file: unsafe file: "
	cfg, _, _ := guardFiles(t, 0o600, 0o600)
	pw := filepath.Join(filepath.Dir(cfg), "db-password")
	writeMode(t, pw, "dbpass\n", 0o644)
	raw, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	writeMode(t, cfg, string(raw)+"[secrets.realtime]\ndsn = \"mysql://astguard@127.0.0.1/asterisk\"\npassword_file = \""+pw+"\"\n", 0o600)
	t.Setenv(config.RealtimePasswordEnv, "")
	code, _, stderr := runGuard("run", "--config", cfg)
	if code != 1 || !strings.HasPrefix(stderr, "run: refusing to start: unsafe file: readable by every user: "+pw+": mode 0644; run: chmod o-r "+pw) {
		t.Errorf("password file 0644: exit %d, stderr %s", code, stderr)
	}
	t.Setenv(config.RealtimePasswordEnv, "fromtheenv")
	if code, _, stderr := runGuard("run", "--config", cfg); code != 1 || !strings.Contains(stderr, nextCheck) {
		t.Errorf("password from the environment: exit %d, stderr %s; want it past the file checks", code, stderr)
	}
}

// hasLog reports whether the JSON log in out has a line with message msg
// and the field key equal to value.
func hasLog(t *testing.T, out, msg, key, value string) bool {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["message"] == msg && m[key] == value {
			return true
		}
	}
	return false
}

// guard bans without --config reads the installed configuration when there
// is one, so it looks where the installed guard keeps its bans.
func TestBansReadsInstalledConfig(t *testing.T) {
	t.Setenv(config.SecretEnv, "")
	dir := t.TempDir()
	state := filepath.Join(dir, "bans.json")
	now := time.Now().UTC().Truncate(time.Second)
	raw, _ := json.Marshal(map[string]any{"version": 1, "bans": []map[string]any{{
		"addr": "192.0.2.9", "since": now, "until": now.Add(time.Hour), "reason": "auth_failures critical", "extension": "",
	}}})
	writeMode(t, state, string(raw), 0o600)
	path := filepath.Join(dir, "config.toml")
	writeMode(t, path, fmt.Sprintf("[response]\nstate_file = %q\nadmin_socket = %q\n", state, filepath.Join(dir, "admin.sock")), 0o600)
	useInstalledConfig(t, path)
	code, stdout, stderr := runGuard("bans", "--json")
	if code != 0 || !strings.Contains(stdout, `"192.0.2.9/32"`) {
		t.Fatalf("exit %d, stdout %q, stderr %q; want the installed config's ban", code, stdout, stderr)
	}
}

// The CrowdSec credentials files are checked as the AMI secret's is.
func TestRunRefusesSharedCrowdSecFiles(t *testing.T) {
	cfg, _, _ := guardFiles(t, 0o600, 0o600)
	dir := filepath.Dir(cfg)
	t.Setenv(config.CrowdSecPasswordEnv, "")
	t.Setenv(config.CrowdSecAPIKeyEnv, "")
	pw, key := filepath.Join(dir, "crowdsec-password"), filepath.Join(dir, "crowdsec-key")
	writeMode(t, pw, "pw\n", 0o600)
	writeMode(t, key, "key\n", 0o644)
	data, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	data = append(data, "[crowdsec]\npush = true\npull = true\nmachine_id = \"pbx-1\"\npassword_file = \"crowdsec-password\"\napi_key_file = \"crowdsec-key\"\n"...)
	writeMode(t, cfg, string(data), 0o600)
	code, _, stderr := runGuard("run", "--config", cfg)
	want := "run: refusing to start: unsafe file: readable by every user: " + key + ": mode 0644; run: chmod o-r " + key +
		" (0600, or 0640 to share it with a group)\n"
	if code != 1 || !strings.HasPrefix(stderr, want) {
		t.Errorf("CrowdSec key 0644: exit %d, stderr\n%s\nwant\n%s", code, stderr, want)
	}
}
