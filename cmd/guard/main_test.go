package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
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
	recs, summary := replayOut(t, file, fixtures+"pjsip-bruteforce.ami")
	// The summary on stderr: each file's counts, one line per extension and
	// address, the totals.
	for _, want := range []string{
		file + ": 4093 messages (3729 of unused events skipped, 0 malformed, 0 oversized), 15 alerts\n  SIP/200 ",
		"\n  127.0.0.6  would act  critical  tried 300, 301, 9999, admin  auth_failures 5 failures\n",
		"\ntotal: 2 files (0 failed), 4110 messages",
	} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary on stderr lacks %q:\n%s", want, summary)
		}
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

// Files are replayed side by side, and their alerts come out in the order of
// the files, as when they are replayed one at a time.
func TestReplayKeepsFileOrder(t *testing.T) {
	files := []string{"attack-mixed.ami", "pjsip-bruteforce.ami", "hangup-events.ami", "after-rotation.ami", "attack-mixed.ami"}
	var one bytes.Buffer
	for _, f := range files {
		var stdout, stderr bytes.Buffer
		if code := run([]string{"replay", fixtures + f}, &stdout, &stderr); code != 0 {
			t.Fatalf("%s: exit %d: %s", f, code, stderr.String())
		}
		one.Write(stdout.Bytes())
	}
	args := []string{"replay"}
	for _, f := range files {
		args = append(args, fixtures+f)
	}
	var stdout, stderr bytes.Buffer
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if stdout.String() != one.String() || one.Len() == 0 {
		t.Errorf("alerts of the files together differ from the files one at a time:\n%s\nvs\n%s", stdout.String(), one.String())
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

// The verdicts of the summary follow the configuration's mode and policy.
func TestReplaySummaryFollowsThePolicy(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "guard.toml")
	// Enforce, but only log the call rules' criticals.
	toml := "mode = \"enforce\"\n"
	for _, rule := range []string{"call_rate", "concurrent", "prefix_guess", "international"} {
		toml += "[policy." + rule + "]\ncritical = [\"alert\"]\n"
	}
	if err := os.WriteFile(cfg, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	_, summary := replayOut(t, "--config", cfg, fixtures+"attack-mixed.ami")
	for _, want := range []string{
		`\n  SIP/200 +no action +critical +from 127\.0\.0\.2 `,
		`\n  PJSIP/300 +no action +critical +from 127\.0\.0\.5 `,
		`\n  127\.0\.0\.4 +stopped +critical +tried 200, 201, 1000 +auth_failures 5 failures\n`,
		`\n  127\.0\.0\.2 +warning +warning +failed_probes 3 attempts\n`,
	} {
		if !regexp.MustCompile(want).MatchString(summary) {
			t.Errorf("summary does not match %s:\n%s", want, summary)
		}
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
	recs, summary := replayOut(t, file)
	if want := fmt.Sprintf("%d alerts; 2 forged", len(recs)); !strings.Contains(summary, want) {
		t.Errorf("the summary on stderr does not report 2 forged messages (%q):\n%s", want, summary)
	}
	for _, r := range recs {
		if r.Extension == "999" {
			t.Errorf("alert blames the forged channel: %+v", r)
		}
	}
}
