package guard

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/crowdsec"
	"github.com/astguard/astguard/internal/crowdsec/cstest"
	"github.com/astguard/astguard/internal/metrics"
	"github.com/astguard/astguard/internal/policy"
)

// crowdSecConfig turns [crowdsec] on in c: push with the machine's
// credentials when machine is set, pull with the bouncer's key when key
// is set, selecting the decisions whose scenario holds one of scenarios.
func crowdSecConfig(c *config.Config, url, machine, password, key string, interval time.Duration, scenarios ...string) {
	c.CrowdSec.URL = url
	c.CrowdSec.Push, c.CrowdSec.MachineID, c.CrowdSec.Password = machine != "", machine, config.Secret(password)
	c.CrowdSec.Pull, c.CrowdSec.APIKey = key != "", config.Secret(key)
	c.CrowdSec.PullInterval = config.Duration(interval)
	c.CrowdSec.ScenariosContaining = scenarios
}

func register(t *testing.T, l *cstest.LAPI) (machine, password, key string) {
	t.Helper()
	machine = cstest.Name("guard")
	password, err := l.AddMachine(machine)
	if err != nil {
		t.Fatal(err)
	}
	if key, err = l.AddBouncer(cstest.Name("guard")); err != nil {
		t.Fatal(err)
	}
	return machine, password, key
}

// The fleet: guard A stops a password-guessing attack recorded on
// Asterisk 20 (PJSIP, from 127.0.0.6) and pushes its ban to the real
// CrowdSec Local API; guard B, whose Asterisk never saw the attacker,
// bans the address at its first pull after the push, so within one pull
// interval. A recognises its own decision when it pulls it back.
func TestCrowdSecFleet(t *testing.T) {
	t.Parallel()
	l := cstest.Shared(t)
	const interval = time.Second
	machineA, pwA, keyA := register(t, l)
	_, _, keyB := register(t, l)
	attacker := netip.MustParseAddr("127.0.0.6")
	// The Local API outlives a test: no decision of an earlier run (-count)
	// may reach B before A's. (cscli fails when there is none to delete.)
	_, _ = l.Cscli("decisions", "delete", "--ip", attacker.String())

	hB := startGuardOn(t, amitest.Options{}, func(c *config.Config) {
		crowdSecConfig(c, l.URL, "", "", keyB, interval, crowdsec.ScenarioPrefix)
	}, nil, nil)
	gB := <-hB.guard
	waitFor(t, "B's first pull", 20*time.Second, func() bool { return gB.CrowdSec().Stats().Pulls >= 1 })

	hA := startBruteForce(t, func(c *config.Config) {
		crowdSecConfig(c, l.URL, machineA, pwA, keyA, interval, crowdsec.ScenarioPrefix)
	})
	gA := <-hA.guard
	waitFor(t, "A's ban of the attacker", 30*time.Second, func() bool {
		return hA.outcomes.has(policy.BlockIP, policy.Done, policy.AddressKey(attacker))
	})
	waitFor(t, "A's ban pushed", 30*time.Second, func() bool { return gA.CrowdSec().Stats().AlertsSent >= 1 })
	pullsAtPush := gB.CrowdSec().Stats().Pulls
	banA, _ := findBan(gA.Bans(), attacker)

	var applied crowdsec.Tracked
	waitFor(t, "B's ban of the attacker", 30*time.Second, func() bool {
		for _, d := range gB.CrowdSec().Decisions() {
			if d.Prefix == netip.PrefixFrom(attacker, 32) && d.Result == crowdsec.Applied {
				applied = d
				return true
			}
		}
		return false
	})
	banB, _ := findBan(gB.Bans(), attacker)
	if banB.Since.Before(banA.Since) {
		t.Fatalf("B banned %s at %v, before A did at %v: not A's decision", attacker, banB.Since, banA.Since)
	}
	if banB.Origin != bans.OriginCrowdSec || banB.DryRun {
		t.Errorf("B's ban %+v, want a real ban of origin crowdsec", banB)
	}
	if !contains(blocked(hB), attacker) {
		t.Errorf("B's firewall blocks %v, not %s", blocked(hB), attacker)
	}
	// Pull pullsAtPush+1 may have started before the push; the one after
	// it started after the push, at most one interval after the one
	// before it ended.
	if applied.Pull > pullsAtPush+2 {
		t.Errorf("B applied the decision at pull %d (%+v); %d pulls were done when A's push was: want it within one pull interval", applied.Pull, applied, pullsAtPush)
	}
	t.Logf("fleet: A banned %s at %s, B at %s: %v later (pull interval %v; B's pull %d, %d done at A's push)",
		attacker, banA.Since.Format(time.RFC3339Nano), banB.Since.Format(time.RFC3339Nano), banB.Since.Sub(banA.Since), interval, applied.Pull, pullsAtPush)

	waitFor(t, "A's pull of its own decision", 20*time.Second, func() bool { return gA.CrowdSec().Stats().Decisions[crowdsec.Own] >= 1 })
	if b, _ := findBan(gA.Bans(), attacker); b.Origin != bans.OriginAstguard || !b.Until.Equal(banA.Until) {
		t.Errorf("A's own ban after its pull: %+v, want %+v", b, banA)
	}
	d, ok := lapiDecisionOf(t, l, machineA, attacker.String())
	if !ok || d.Scenario != "astguard/auth_failures" || d.Origin != crowdsec.OriginAstguard {
		t.Errorf("the Local API's decision from A: %+v, %v", d, ok)
	}
}

// In observe mode nothing is pushed, and a pulled decision is only
// logged as "would": no ban.
func TestCrowdSecObserveChangesNothing(t *testing.T) {
	t.Parallel()
	l := cstest.Shared(t)
	machine, pw, key := register(t, l)
	tag := cstest.Name("observe")
	pulled := netip.MustParseAddr("203.0.113.61")
	if _, err := l.Cscli("decisions", "add", "--ip", pulled.String(), "--duration", "1h", "--reason", tag); err != nil {
		t.Fatal(err)
	}
	h := startBruteForce(t, func(c *config.Config) {
		c.Mode = config.ModeObserve
		crowdSecConfig(c, l.URL, machine, pw, key, 200*time.Millisecond, tag)
	})
	g := <-h.guard
	waitFor(t, "the would outcome of the attack and the would of the pulled decision", 30*time.Second, func() bool {
		return h.outcomes.has(policy.BlockIP, policy.Would, policy.AddressKey(netip.MustParseAddr("127.0.0.6"))) &&
			g.CrowdSec().Stats().Decisions[crowdsec.Would] >= 1
	})
	pulls := g.CrowdSec().Stats().Pulls
	waitFor(t, "two more pulls", 20*time.Second, func() bool { return g.CrowdSec().Stats().Pulls >= pulls+2 })
	if st := g.CrowdSec().Stats(); st.AlertsSent != 0 || st.AlertsQueued != 0 || st.Decisions[crowdsec.Applied] != 0 {
		t.Errorf("observe mode: %+v, want nothing pushed, nothing applied", st)
	}
	if len(g.Bans().List()) != 0 {
		t.Errorf("observe mode banned %+v", g.Bans().List())
	}
	ds, err := l.Decisions()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if d.MachineID == machine {
			t.Errorf("observe mode pushed %+v", d)
		}
	}
}

// The Local API going away never stops the guard: /healthz says so in its
// body and stays 200, the metrics count it, and both show the recovery.
func TestCrowdSecOutageInHealthz(t *testing.T) {
	t.Parallel()
	l := cstest.Shared(t)
	_, _, key := register(t, l)
	px := cstest.StartProxy(t, l.Addr)
	h := startGuardOn(t, amitest.Options{}, func(c *config.Config) {
		c.Metrics.Listen = "127.0.0.1:0"
		crowdSecConfig(c, px.URL(), "", "", key, 200*time.Millisecond, cstest.Name("none"))
	}, nil, nil)
	waitLoggedIn(t, h)
	g := <-h.guard
	health := func() (int, metrics.Health) {
		resp, err := http.Get("http://" + g.MetricsAddr() + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var hl metrics.Health
		b, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(b, &hl); err != nil {
			t.Fatalf("/healthz %s: %v", b, err)
		}
		return resp.StatusCode, hl
	}
	waitFor(t, "the pull up in /healthz", 20*time.Second, func() bool { _, hl := health(); return hl.CrowdSec["pull"].State == "up" })

	px.SetDown(true)
	waitFor(t, "the pull down in /healthz", 20*time.Second, func() bool { _, hl := health(); return hl.CrowdSec["pull"].State == "down" })
	code, hl := health()
	if code != http.StatusOK || !hl.OK() || hl.CrowdSec["pull"].Problem != "unreachable" || hl.CrowdSec["pull"].Detail == "" {
		t.Errorf("/healthz during the outage: %d %+v; want 200, ok, the pull unreachable with its cause", code, hl)
	}
	reg := gathered(t, g)
	if up := metricsValue(reg, crowdsec.NameUp, "api=pull"); up != 0 {
		t.Errorf("%s{api=pull} = %v during the outage", crowdsec.NameUp, up)
	}
	if n := metricsValue(reg, crowdsec.NameOutages, "api=pull"); n != 1 {
		t.Errorf("%s{api=pull} = %v, want 1", crowdsec.NameOutages, n)
	}

	px.SetDown(false)
	waitFor(t, "the pull up again in /healthz", 20*time.Second, func() bool { _, hl := health(); return hl.CrowdSec["pull"].State == "up" })
	if up := metricsValue(gathered(t, g), crowdsec.NameUp, "api=pull"); up != 1 {
		t.Errorf("%s{api=pull} = %v after the recovery", crowdsec.NameUp, up)
	}
	select {
	case err := <-h.done:
		t.Fatalf("the guard stopped: %v", err)
	default:
	}
}

// startBruteForce runs the guard (in enforce mode unless mutate says
// otherwise) against a fake Asterisk 20 that plays the recorded PJSIP
// password guessing from 127.0.0.6, as fast as it can, once both AMI
// sessions of the guard have logged in: none of it goes unheard.
func startBruteForce(t *testing.T, mutate func(*config.Config)) *harness {
	t.Helper()
	attack, err := os.ReadFile(transcripts + "pjsip-bruteforce.ami")
	if err != nil {
		t.Fatal(err)
	}
	h := startGuardOn(t, amitest.Options{Transcript: bytes.NewReader(attack)}, mutate, nil, nil)
	waitLoggedIn(t, h)
	h.srv.Play()
	return h
}

func findBan(m *bans.Manager, a netip.Addr) (bans.Ban, bool) {
	for _, b := range m.List() {
		if b.Prefix == netip.PrefixFrom(a, a.BitLen()) {
			return b, true
		}
	}
	return bans.Ban{}, false
}

func contains(as []netip.Addr, a netip.Addr) bool {
	for _, x := range as {
		if x == a {
			return true
		}
	}
	return false
}

// lapiDecisionOf returns the Local API's decision for value from machine.
func lapiDecisionOf(t *testing.T, l *cstest.LAPI, machine, value string) (cstest.Decision, bool) {
	t.Helper()
	ds, err := l.Decisions()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if d.MachineID == machine && d.Value == value {
			return d, true
		}
	}
	return cstest.Decision{}, false
}
