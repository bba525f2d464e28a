package guard

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/metrics"
)

// metricsScrape reads the guard's /metrics as Prometheus does.
func metricsScrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// metricsValue is the value of the series of name with exactly these labels
// (name=value pairs); for a histogram, its count. A missing series is -1.
func metricsValue(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
next:
	for _, m := range fams[name].GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			if !slices.Contains(labels, l.GetName()+"="+l.GetValue()) {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return -1
}

// getHealthz returns /healthz's status code and body.
func getHealthz(t *testing.T, addr string) (int, metrics.Health) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h metrics.Health
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, h
}

// logCounts counts the guard's log lines of one message by two of their
// fields, "a=b" -> n.
func logCounts(logs, message, f1, f2 string) map[string]float64 {
	out := make(map[string]float64)
	for _, line := range strings.Split(logs, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["message"] != message {
			continue
		}
		out[fmt.Sprint(m[f1])+"="+fmt.Sprint(m[f2])]++
	}
	return out
}

// The guard against the attack transcript: /healthz is healthy while it
// streams, and the counters move as the fixture says.
func TestMetricsAttackMixed(t *testing.T) {
	t.Parallel()
	start := time.Now()
	h := startGuard(t, "attack-mixed.ami", 4, func(c *config.Config) { c.Metrics.Listen = "127.0.0.1:0" })
	var g *Guard
	select {
	case g = <-h.guard:
	case <-time.After(10 * time.Second):
		t.Fatal("guard did not start")
	}
	addr := g.MetricsAddr()
	if host, port, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" || port == "0" {
		t.Fatalf("MetricsAddr() = %q", addr)
	}

	// Healthy once the event session is up (silence counts from the
	// start), and while events arrive.
	var health metrics.Health
	waitFor(t, "/healthz 200 with events arriving", 10*time.Second, func() bool {
		code, hz := getHealthz(t, addr)
		health = hz
		if code != http.StatusOK && len(hz.Reasons) != 1 {
			t.Errorf("/healthz: %d %+v", code, hz)
		}
		return code == http.StatusOK && hz.LastEvent != nil
	})
	if health.Status != "ok" || !health.AMI["events"] || health.SilenceAlarm != "5m" {
		t.Errorf("/healthz: %+v", health)
	}
	select {
	case <-h.srv.Done():
		t.Log("the transcript ended before /healthz was first read")
	default:
	}

	ip := netip.MustParseAddr
	waitFor(t, "bans of 127.0.0.2 and 127.0.0.5", 20*time.Second, func() bool {
		b := blocked(h)
		return slices.Contains(b, ip("127.0.0.2")) && slices.Contains(b, ip("127.0.0.5"))
	})
	select {
	case <-h.srv.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("transcript not streamed")
	}
	if code, hz := getHealthz(t, addr); code != http.StatusOK {
		t.Errorf("/healthz after the transcript: %d %+v", code, hz)
	}

	// Every outcome and alert logged is counted, and nothing else: the
	// counters match the log once the actions in flight are done (the
	// detector publishes its key counts every second).
	var fams map[string]*dto.MetricFamily
	var mismatch string
	waitFor(t, "counters matching the log", 20*time.Second, func() bool {
		fams = metricsScrape(t, addr)
		logs := h.logs.String()
		mismatch = ""
		outcomes := logCounts(logs, "action outcome", "action", "result")
		for _, a := range metrics.Actions {
			for _, r := range metrics.Results {
				if got, want := metricsValue(fams, metrics.NameActions, "action="+a, "result="+r), outcomes[a+"="+r]; got != want {
					mismatch += fmt.Sprintf(" actions{%s,%s}=%v log=%v", a, r, got, want)
				}
			}
		}
		alerts := logCounts(logs, "fraud alert", "rule", "severity")
		var total float64
		for _, f := range fams[metrics.NameAlerts].GetMetric() {
			total += f.GetCounter().GetValue()
		}
		for k, want := range alerts {
			rule, sev, _ := strings.Cut(k, "=")
			if got := metricsValue(fams, metrics.NameAlerts, "rule="+rule, "severity="+sev); got != want {
				mismatch += fmt.Sprintf(" alerts{%s,%s}=%v log=%v", rule, sev, got, want)
			}
			total -= want
		}
		if total != 0 {
			mismatch += fmt.Sprintf(" %v alerts counted and not logged", total)
		}
		if metricsValue(fams, metrics.NameTrackedKeys, "kind=extension") < 3 {
			mismatch += " tracked extensions not published"
		}
		return mismatch == ""
	})
	if mismatch != "" {
		t.Fatal(mismatch)
	}

	for _, c := range []struct {
		name   string
		labels []string
		min    float64
		max    float64 // -1: no upper bound
	}{
		// Lower bounds: 201's 3 calls and the first calls of 200 and 300;
		// how many more they make before they are stopped depends on the
		// pace.
		{metrics.NameEvents, []string{"type=Newchannel"}, 10, 90},
		{metrics.NameEvents, []string{"type=Hangup"}, 10, -1},
		{metrics.NameEvents, []string{"type=DialBegin"}, 5, -1},
		{metrics.NameEvents, []string{"type=PeerStatus"}, 1, -1},
		{metrics.NameEvents, []string{"type=InvalidPassword"}, 5, -1}, // 127.0.0.4 guessing, and more after the rotation
		{metrics.NameEvents, []string{"type=ChallengeSent"}, 10, -1},
		{metrics.NameEvents, []string{"type=SuccessfulAuth"}, 3, -1},
		// Nothing the detector does not use is even queued (no --record).
		{metrics.NameEvents, []string{"type=Unknown"}, 0, 0},
		{metrics.NameAlerts, []string{"rule=auth_failures", "severity=critical"}, 1, -1},
		{metrics.NameActions, []string{"action=block_ip", "result=done"}, 2, -1},
		{metrics.NameActions, []string{"action=hangup", "result=done"}, 2, -1},
		{metrics.NameActions, []string{"action=rotate_secret", "result=done"}, 2, -1},
		{metrics.NameActions, []string{"action=rotate_secret", "result=failed"}, 0, 0},
		{metrics.NameActions, []string{"action=block_ip", "result=would"}, 0, 0}, // enforce mode
		{metrics.NameActionDuration, []string{"action=block_ip"}, 2, -1},
		{metrics.NameActionDuration, []string{"action=rotate_secret"}, 2, -1},
		{metrics.NameEventsDropped, nil, 0, 0},
		{metrics.NameAMIRejected, []string{"reason=malformed"}, 0, 0},
		{metrics.NameAMIRejected, []string{"reason=oversized"}, 0, 0},
		{metrics.NameAMITimeouts, []string{"session=events"}, 0, 0},
		{metrics.NameAMITimeouts, []string{"session=urgent"}, 0, 0},
		{metrics.NameQueueDepth, nil, 0, 65536},
		{metrics.NameQueueCapacity, nil, 65536, 65536},
		{metrics.NameAMIConnected, []string{"session=events"}, 1, 1},
		{metrics.NameAMIConnected, []string{"session=urgent"}, 1, 1},
		{metrics.NameAMIConnects, []string{"session=events"}, 1, 1},
		{metrics.NameAMIConnects, []string{"session=urgent"}, 1, 1},
		{metrics.NameBansActive, nil, 2, -1},
		{metrics.NameTrackedKeys, []string{"kind=extension"}, 3, -1}, // 200, 201, 300
		{metrics.NameTrackedKeys, []string{"kind=address"}, 1, -1},
		{metrics.NameKeysEvicted, nil, 0, 0},
		{metrics.NameKeysUntracked, nil, 0, 0},
		{metrics.NameLastEvent, nil, float64(start.Unix()), float64(time.Now().Unix() + 1)},
	} {
		v := metricsValue(fams, c.name, c.labels...)
		if v < c.min || c.max >= 0 && v > c.max {
			t.Errorf("%s%v = %v, want %v to %v", c.name, c.labels, v, c.min, c.max)
		}
	}
	// 200 and 300 each went critical on a call rule (which one first
	// depends on the pace: call_rate or prefix_guess).
	var critical float64
	for _, rule := range []string{"call_rate", "concurrent", "prefix_guess", "international"} {
		critical += metricsValue(fams, metrics.NameAlerts, "rule="+rule, "severity=critical")
	}
	if critical < 2 {
		t.Errorf("%v critical alerts of the call rules, want at least 2", critical)
	}
	if got, want := metricsValue(fams, metrics.NameBansActive), float64(len(g.Bans().List())); got != want {
		t.Errorf("bans_active = %v, the ban list has %v", got, want)
	}
	// The attacker-controlled strings are nowhere in a label.
	for name, f := range fams {
		if !strings.HasPrefix(name, "astguard_") {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if v := l.GetValue(); strings.Contains(v, "127.0.0.") || strings.Contains(v, "200") || strings.Contains(v, "4420794") {
					t.Errorf("%s has the label %s=%q", name, l.GetName(), v)
				}
			}
		}
	}

	// Blind: nothing arrives within silence_alarm (here 1 ns, so that the
	// test need not wait; the clock-driven cases are in internal/metrics).
	g.Metrics().SetSilenceAlarm(time.Nanosecond)
	code, hz := getHealthz(t, addr)
	if code != http.StatusServiceUnavailable || hz.Status != "unhealthy" || len(hz.Reasons) != 1 || !strings.HasPrefix(hz.Reasons[0], "no event for ") {
		t.Errorf("/healthz with a 1ns silence_alarm: %d %+v", code, hz)
	}

	// The endpoint ends with the guard.
	h.stop(t)
	if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
		resp.Body.Close()
		t.Error("/metrics still served after the guard stopped")
	}
}

// Without metrics.listen nothing listens.
func TestMetricsOff(t *testing.T) {
	t.Parallel()
	h := startGuard(t, "pjsip-bruteforce.ami", 50, nil)
	select {
	case g := <-h.guard:
		if a := g.MetricsAddr(); a != "" {
			t.Errorf("MetricsAddr() = %q with metrics.listen empty", a)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("guard did not start")
	}
	if strings.Contains(h.logs.String(), "/metrics") {
		t.Error("the log says metrics are served")
	}
}

// An address that cannot be bound stops the guard at its start, before it
// touches the firewall or AMI.
func TestMetricsBindFailure(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.AMI.Address = "127.0.0.1:1" // never dialled
	cfg.AMI.Secret = "guardpass"
	cfg.Metrics.Listen = ln.Addr().String()
	cfg.Response.StateFile = filepath.Join(dir, "bans.json")
	cfg.Response.SecretsFile = filepath.Join(dir, "secrets.jsonl")
	cfg.Response.AdminSocket = filepath.Join(dir, "admin.sock")
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), Options{Config: cfg, Logger: zerolog.Nop(), Firewall: firewall.NewDryRun(zerolog.Nop()),
			Started: func(*Guard) { t.Error("the guard started") }})
	}()
	select {
	case err := <-done:
		want := "metrics.listen: listen tcp " + ln.Addr().String() + ": bind: address already in use"
		if err == nil || err.Error() != want {
			t.Errorf("Run: %v\nwant %s", err, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not fail at its start")
	}
}
