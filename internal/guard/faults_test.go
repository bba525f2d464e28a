package guard

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/policy"
)

// An action answered with Response: Error is retried per policy; the alert
// lines say what happened.
func TestActionErrorIsRetried(t *testing.T) {
	t.Parallel()
	h := startGuard(t, "attack-mixed.ami", 4, func(c *config.Config) { c.Response.RetryMax = 3 })
	h.srv.FailAction("UpdateConfig", "Internal error writing the file", 2)
	waitFor(t, "200's secret rotated after two errors", 20*time.Second, func() bool {
		s, _ := confSection(h.srv.Conf("sip.conf"), "200", "secret")
		return s != "Leaky200"
	})
	n := 0
	for _, a := range h.srv.Actions() {
		if a.Name == "UpdateConfig" {
			n++
		}
	}
	if n < 3 {
		t.Errorf("UpdateConfig sent %d times, want the 2 failures and a success", n)
	}
	waitFor(t, "the rotation outcome", 10*time.Second, func() bool {
		return strings.Contains(h.logs.String(), `"action":"rotate_secret","result":"done"`)
	})
}

// An error a retry cannot fix is not retried and is reported as failed.
func TestPermanentActionErrorIsReported(t *testing.T) {
	t.Parallel()
	h := startGuard(t, "attack-mixed.ami", 4, nil)
	h.srv.FailAction("UpdateConfig", "Given category does not exist", 1)
	waitFor(t, "a failed rotation line", 20*time.Second, func() bool {
		return strings.Contains(h.logs.String(), `"action":"rotate_secret","result":"failed"`)
	})
	if !strings.Contains(h.logs.String(), "Given category does not exist") {
		t.Error("the outcome does not say why")
	}
}

// refusingFirewall fails every change, as iptables missing or refused does.
type refusingFirewall struct{ firewall.DryRun }

var errRefused = errors.New("iptables: permission denied (you must be root)")

func (*refusingFirewall) Block(context.Context, ...firewall.Entry) error { return errRefused }
func (*refusingFirewall) Setup(context.Context) error                    { return errRefused }

// iptables refused: the block fails with an alert, and the other actions are
// still done.
func TestFirewallRefusedOtherActionsDone(t *testing.T) {
	t.Parallel()
	h := startGuardWith(t, "attack-mixed.ami", 4, nil, &refusingFirewall{})
	waitFor(t, "hang-up and rotation of 200 despite the firewall", 20*time.Second, func() bool {
		s, _ := confSection(h.srv.Conf("sip.conf"), "200", "secret")
		return s != "Leaky200" && strings.Contains(h.logs.String(), `"action":"hangup","result":"done"`)
	})
	logs := h.logs.String()
	if !strings.Contains(logs, `"action":"block_ip","result":"failed"`) || !strings.Contains(logs, "permission denied") {
		t.Error("no failed block_ip line saying why")
	}
}

// gatedFirewall holds every Block until the gate opens.
type gatedFirewall struct {
	*firewall.DryRun
	gate chan struct{}
}

func (g *gatedFirewall) Block(ctx context.Context, entries ...firewall.Entry) error {
	select {
	case <-g.gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.DryRun.Block(ctx, entries...)
}

// A later alert of an incident whose block is still running is not lost:
// the actions the first alert's policy did not include run in the same
// incident, the hang-up at once, the rotation only after the block.
func TestLaterAlertOfAnIncidentInFlight(t *testing.T) {
	t.Parallel()
	fw := &gatedFirewall{DryRun: firewall.NewDryRun(zerolog.Nop()), gate: make(chan struct{})}
	h := startGuardWith(t, "attack-mixed.ami", 4, func(c *config.Config) {
		c.Policy.CallRate.Critical = []string{"alert", "block_ip"}
		c.Policy.Concurrent.Critical = []string{"alert"}
		c.Policy.International.Critical = []string{"alert"}
		c.Policy.PrefixGuess.Critical = []string{"alert", "hangup", "rotate_secret"}
	}, fw)
	sip200 := policy.ExtensionKey(ami.TechSIP, "200")
	var hung Outcome
	waitFor(t, "the hang-up decided by the prefix_guess critical while the block waits", 20*time.Second, func() bool {
		l := h.outcomes.list(func(o *Outcome) bool {
			return o.Action == policy.Hangup && o.Key == sip200 && o.AlertRule == detector.RulePrefixGuess
		})
		if len(l) > 0 {
			hung = l[0]
		}
		return len(l) > 0
	})
	if hung.Result != policy.Done || hung.Rule != detector.RuleCallRate || hung.Incident == "" {
		t.Errorf("hang-up %+v: want done, in the incident call_rate opened", hung)
	}
	if h.outcomes.has(policy.RotateSecret, policy.Done, sip200) {
		t.Fatal("the secret was rotated while the block of its incident was still running")
	}
	close(fw.gate)
	waitFor(t, "200's secret rotated after the block", 20*time.Second, func() bool {
		return h.outcomes.has(policy.RotateSecret, policy.Done, sip200)
	})
	var order []policy.Action
	for _, o := range h.outcomes.list(func(o *Outcome) bool { return o.Key == sip200 }) {
		if o.Incident != hung.Incident {
			t.Errorf("%s of SIP/200 in incident %s, want %s", o.Action, o.Incident, hung.Incident)
		}
		if o.AlertRule != 0 { // not a new call of the stopped extension
			order = append(order, o.Action)
		}
	}
	if want := []policy.Action{policy.Hangup, policy.BlockIP, policy.RotateSecret}; !slices.Equal(order, want) {
		t.Errorf("outcomes of SIP/200 in the order %v, want %v", order, want)
	}
}
