package guard

import (
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
)

// A held concurrent alert is released only by a rebuild that began after
// it was raised, and then only as far as Asterisk's channel list bears it
// out.
func TestHeldAlertsRelease(t *testing.T) {
	cfg := detector.Default()
	cfg.Concurrent = detector.Threshold{Warning: 4, Critical: 8}
	cfg.UnauthenticatedCritical = true
	det := detector.New(cfg)
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	live := func(n int) []detector.LiveChannel {
		var out []detector.LiveChannel
		for i := range n {
			uid := fmt.Sprintf("1795660000.%d", i)
			out = append(out, detector.LiveChannel{Channel: fmt.Sprintf("SIP/201-000004%02x", i), Uniqueid: uid, Linkedid: uid, Exten: "02079460000"})
		}
		return out
	}
	alerts := det.Resync(now, live(8), nil)
	if len(alerts) != 1 || alerts[0].Rule != detector.RuleConcurrent || alerts[0].Severity != detector.Critical {
		t.Fatalf("alerts %+v, want one concurrent critical", alerts)
	}
	var h heldAlerts
	if !holds(&alerts[0]) || !h.hold(&alerts[0], 5) {
		t.Fatal("the concurrent alert was not held")
	}
	log := zerolog.Nop()
	if out := h.release(det, cfg.Concurrent, 4, log, nil); len(out) != 0 || len(h.alerts) != 1 {
		t.Fatalf("a rebuild begun before the alert released %+v (held %d)", out, len(h.alerts))
	}
	// The calls are all up: the alert goes on.
	det.Resync(now.Add(time.Second), live(8), nil)
	out := h.release(det, cfg.Concurrent, 5, log, nil)
	if len(out) != 1 || out[0].Count != 8 || out[0].Severity != detector.Critical || out[0].Extension != "201" || len(h.alerts) != 0 {
		t.Fatalf("released %+v (held %d), want the critical with 8 calls", out, len(h.alerts))
	}
	// Only two are up: it is dropped.
	h.hold(&alerts[0], 6)
	det.Resync(now.Add(2*time.Second), live(2), nil)
	if out := h.release(det, cfg.Concurrent, 7, log, nil); len(out) != 0 || len(h.alerts) != 0 {
		t.Fatalf("released %+v (held %d), want it dropped", out, len(h.alerts))
	}
	// One per extension, and bounded.
	for i := range maxHeld + 10 {
		a := alerts[0]
		a.Extension = fmt.Sprint(1000 + i%(maxHeld+1))
		h.hold(&a, 8)
	}
	if len(h.alerts) != maxHeld {
		t.Errorf("%d held, want %d", len(h.alerts), maxHeld)
	}
	other := alerts[0]
	other.Rule, other.Tech = detector.RuleCallRate, ami.TechSIP
	if holds(&other) {
		t.Error("a call_rate alert is held")
	}
}
