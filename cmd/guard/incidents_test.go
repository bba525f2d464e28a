package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/incident"
	"github.com/astguard/astguard/internal/policy"
)

// stoppedState writes, as a guard in enforce mode does, a state file
// holding the open incident of SIP/200 after its three actions, and
// returns the incident's id.
func stoppedState(t *testing.T, path string, now time.Time) string {
	t.Helper()
	m, err := bans.New(bans.Options{Firewall: firewall.NewDryRun(zerolog.Nop()), StatePath: path, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer m.Close(context.Background())
	book, err := incident.New(incident.Options{Quiet: 15 * time.Minute, Mode: policy.Enforce, Store: m})
	if err != nil {
		t.Fatal(err)
	}
	tab, err := policy.NewTable(&config.Default().Policy)
	if err != nil {
		t.Fatal(err)
	}
	a := &detector.Alert{Time: now, Rule: detector.RuleCallRate, Severity: detector.Critical, Tech: ami.TechSIP, Extension: "200",
		Sources: []netip.Addr{netip.MustParseAddr("127.0.0.2")}, Count: 5, Window: time.Second, Reason: "calls started"}
	decs := book.Decide(tab, a, now, nil)
	if err := book.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, d := range decs {
		if d.Result != policy.Running || d.Action == policy.Alert {
			continue
		}
		target := d.Key.String()
		if d.Action == policy.BlockIP {
			target = d.Addr.String()
			if _, err := m.Ban(context.Background(), bans.Request{Addr: d.Addr, TTL: time.Hour, Reason: d.Reason, Rule: "call_rate", Extension: "SIP/200", Incident: d.Incident}); err != nil {
				t.Fatal(err)
			}
		}
		if err := book.Outcome(d.Incident, d.Action, incident.Outcome{Result: policy.Done, Target: target, Time: now}); err != nil {
			t.Fatal(err)
		}
	}
	return decs[len(decs)-1].Incident
}

// guard incidents and guard release work from the state file when no
// guard runs: the release is written there, so that the guard does not
// stop the extension again when it starts.
func TestIncidentsAndReleaseWithoutDaemon(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "bans.json")
	id := stoppedState(t, state, time.Now())
	cfg := filepath.Join(dir, "guard.toml")
	toml := fmt.Sprintf("[response]\nstate_file = %q\nsecrets_file = %q\nadmin_socket = %q\n", state, filepath.Join(dir, "s.jsonl"), filepath.Join(dir, "admin.sock"))
	if err := os.WriteFile(cfg, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}

	code, stdout, stderr := runGuard("incidents", "--config", cfg)
	if code != 0 {
		t.Fatalf("guard incidents: exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "INCIDENT STATE OF RULE SEVERITY OPENED LAST ALERT ALERTS ACTIONS" {
		t.Fatalf("guard incidents printed:\n%s", stdout)
	}
	f := strings.Fields(lines[1])
	if f[0] != id || f[1] != "stopped" || f[2] != "SIP/200" || f[3] != "call_rate" || f[4] != "critical" || f[7] != "1" ||
		!strings.HasSuffix(lines[1], "hangup done, block_ip done 127.0.0.2, rotate_secret done") {
		t.Errorf("incident line %q", lines[1])
	}
	if stderr != "1 open, 0 closed in the last 7 days, from the state file (no guard running)\n" {
		t.Errorf("stderr %q", stderr)
	}

	code, stdout, stderr = runGuard("release", "--config", cfg, "sip/200")
	if code != 0 || stdout != "SIP/200: incident "+id+" (call_rate) released: its new calls are no longer hung up; its bans stay (guard unblock lifts them)\nno guard running: the state file was updated\n" {
		t.Fatalf("guard release: exit %d\nstdout %q\nstderr %q", code, stdout, stderr)
	}
	code, stdout, stderr = runGuard("incidents", "--config", cfg, "--json")
	var l incident.Listing
	if err := json.Unmarshal([]byte(stdout), &l); code != 0 || err != nil {
		t.Fatalf("guard incidents --json: exit %d, %v: %s", code, err, stderr)
	}
	if len(l.Open) != 0 || len(l.Recent) != 1 || l.Recent[0].ID != id || l.Recent[0].CloseReason != incident.ClosedReleased {
		t.Errorf("after the release: %+v", l)
	}
	st, err := bans.ReadState(state)
	if err != nil || len(st.Bans) != 1 || st.Bans[0].Target() != "127.0.0.2" {
		t.Errorf("the bans after the release: %+v, %v; want the ban kept", st.Bans, err)
	}

	if code, _, stderr := runGuard("release", "--config", cfg, "SIP/200"); code != 1 || stderr != "release: SIP/200 has no open incident: its calls are not hung up\n" {
		t.Errorf("a second release: exit %d, stderr %q", code, stderr)
	}
	for _, bad := range []string{"200", "SIP/", "FOO/200", "SIP/2;00", "SIP/200\nx"} {
		if code, _, stderr := runGuard("release", "--config", cfg, bad); code != 2 || !strings.Contains(stderr, "is not an extension: write TECH/NAME") {
			t.Errorf("release %q: exit %d, stderr %q", bad, code, stderr)
		}
	}
}
