package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const fixtures = "../../testdata/transcripts/"

type record struct {
	Time      string   `json:"time"`
	File      string   `json:"file"`
	Seq       int      `json:"seq"`
	Rule      string   `json:"rule"`
	Severity  string   `json:"severity"`
	Tech      string   `json:"tech"`
	Extension string   `json:"extension"`
	IP        string   `json:"ip"`
	Sources   []string `json:"sources"`
	Accounts  []string `json:"accounts"`
	Count     int      `json:"count"`
	Window    string   `json:"window"`
	Numbers   []string `json:"numbers"`
	Reason    string   `json:"reason"`
}

func replayOut(t *testing.T, args ...string) ([]record, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := run(append([]string{"replay"}, args...), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr.String())
	}
	var out []record
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("stdout line is not JSON: %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out, stderr.String()
}

func TestReplayPrintsAlertsAsJSONLines(t *testing.T) {
	file := fixtures + "attack-mixed.ami"
	recs, logs := replayOut(t, file, fixtures+"pjsip-bruteforce.ami")
	if !strings.Contains(logs, `"message":"replayed"`) {
		t.Errorf("no replay summary on stderr: %s", logs)
	}
	var crit200, crit300, crit4, crit6 bool
	for _, r := range recs {
		if _, err := time.Parse(time.RFC3339, r.Time); err != nil {
			t.Errorf("time %q is not RFC 3339", r.Time)
		}
		if r.Seq < 1 || r.Rule == "" || (r.Severity != "warning" && r.Severity != "critical") || r.Window == "" || r.Reason == "" {
			t.Errorf("incomplete record %+v", r)
		}
		if _, err := time.ParseDuration(r.Window); err != nil {
			t.Errorf("window %q is not a Go duration", r.Window)
		}
		if (r.Extension == "") == (r.IP == "") {
			t.Errorf("record names both or neither an extension and an ip: %+v", r)
		}
		if r.Severity != "critical" {
			continue
		}
		switch {
		case r.File == file && r.Tech == "SIP" && r.Extension == "200" && contains(r.Sources, "127.0.0.2"):
			crit200 = true
		case r.File == file && r.Tech == "PJSIP" && r.Extension == "300" && contains(r.Sources, "127.0.0.5"):
			crit300 = true
		case r.File == file && r.IP == "127.0.0.4":
			crit4 = true
		case strings.HasSuffix(r.File, "pjsip-bruteforce.ami") && r.IP == "127.0.0.6":
			crit6 = true
		}
		if r.Extension == "201" || r.IP == "127.0.0.3" || contains(r.Sources, "127.0.0.3") {
			t.Errorf("critical alert names the legitimate user: %+v", r)
		}
	}
	if !crit200 || !crit300 || !crit4 || !crit6 {
		t.Errorf("missing criticals: SIP/200 %v, PJSIP/300 %v, 127.0.0.4 %v, 127.0.0.6 %v", crit200, crit300, crit4, crit6)
	}
}

// Each transcript is replayed with fresh state: the same file twice gives
// the same alerts twice.
func TestReplayFreshStatePerFile(t *testing.T) {
	one, _ := replayOut(t, fixtures+"pjsip-bruteforce.ami")
	two, _ := replayOut(t, fixtures+"pjsip-bruteforce.ami", fixtures+"pjsip-bruteforce.ami")
	if len(one) == 0 || len(two) != 2*len(one) {
		t.Fatalf("%d alerts for one replay, %d for two", len(one), len(two))
	}
}

func TestReplayWithConfig(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "guard.toml")
	// Turn password-guessing alerts off: the brute force then raises nothing.
	if err := os.WriteFile(cfg, []byte("[detector.auth_failures]\nwarning = 0\ncritical = 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	recs, _ := replayOut(t, "--config", cfg, fixtures+"pjsip-bruteforce.ami")
	if len(recs) != 0 {
		t.Fatalf("alerts with auth_failures off: %+v", recs)
	}
}

func TestExitCodes(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("[detector.prefix_guess]\nwindow = \"0s\"\nfoo = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"check-config", "--config", "../../config.toml.example"}, 0, "../../config.toml.example: ok\n", ""},
		{[]string{"check-config"}, 0, "defaults: ok\n", ""},
		{[]string{"check-config", "--config", bad}, 1, "", "config is invalid:\n" + bad + ":2: detector.prefix_guess.window must be > 0\n" +
			bad + ":3: unknown key detector.prefix_guess.foo\n"},
		{[]string{"check-config", "--config", "/nonexistent.toml"}, 1, "", "config is invalid:\n"},
		{[]string{"replay", "/nonexistent.ami"}, 1, "", "replay failed"},
		{[]string{"replay"}, 2, "", "name at least one transcript"},
		{[]string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{nil, 2, "", "usage:"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(tc.args, &stdout, &stderr)
		if code != tc.code || !strings.HasPrefix(stdout.String(), tc.stdout) || !strings.Contains(stderr.String(), tc.stderr) {
			t.Errorf("guard %v: exit %d, stdout %q, stderr %q; want exit %d, stdout %q, stderr containing %q",
				tc.args, code, stdout.String(), stderr.String(), tc.code, tc.stdout, tc.stderr)
		}
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// TestReplayAsterisk11CountsForged replays the real Asterisk 11 attack with
// two of 200's Newchannel frames given a forged Channel in the caller name:
// stderr counts them, and they are not counted as calls of anyone.
func TestReplayAsterisk11CountsForged(t *testing.T) {
	raw, err := os.ReadFile(fixtures + "asterisk11-attack-sip.ami")
	if err != nil {
		t.Fatal(err)
	}
	clean, _ := replayOut(t, fixtures+"asterisk11-attack-sip.ami")
	crit := false
	for _, r := range clean {
		crit = crit || r.Severity == "critical" && r.Extension == "200"
		if r.Severity == "critical" && r.Extension != "200" {
			t.Errorf("critical for another than 200: %+v", r)
		}
	}
	if !crit {
		t.Fatalf("no critical for SIP/200 in the Asterisk 11 recording: %+v", clean)
	}
	old := []byte("CallerIDNum: 200\r\nCallerIDName: Alice\r\nAccountCode: \r\n")
	forged := bytes.Replace(raw, old, []byte("CallerIDNum: 200\r\nCallerIDName: Alice\r\nChannel: SIP/999-00000001\r\nAccountCode: \r\n"), 2)
	if bytes.Equal(forged, raw) {
		t.Fatal("no Newchannel of 200 to alter")
	}
	file := filepath.Join(t.TempDir(), "forged.ami")
	if err := os.WriteFile(file, forged, 0o600); err != nil {
		t.Fatal(err)
	}
	recs, logs := replayOut(t, file)
	var summary struct {
		Forged  *int `json:"forged"`
		Alerts  int  `json:"alerts"`
		Message string
	}
	warned := false
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var l struct {
			Level, Message string
			Forged         int
		}
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("stderr line is not JSON: %q", line)
		}
		if l.Message == "replayed" {
			if err := json.Unmarshal([]byte(line), &summary); err != nil {
				t.Fatal(err)
			}
		}
		warned = warned || l.Level == "warn" && l.Forged == 2
	}
	if summary.Forged == nil || *summary.Forged != 2 || summary.Alerts != len(recs) || !warned {
		t.Errorf("stderr does not report 2 forged messages:\n%s", logs)
	}
	for _, r := range recs {
		if r.Extension == "999" {
			t.Errorf("alert blames the forged channel: %+v", r)
		}
	}
}
