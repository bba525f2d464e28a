package guard

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/metrics"
)

// newchannels is how many Newchannel events the guard's detector loop has
// taken.
func newchannels(t *testing.T, g *Guard) float64 {
	t.Helper()
	gathered, err := g.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	fams := map[string]*dto.MetricFamily{}
	for _, f := range gathered {
		fams[f.GetName()] = f
	}
	return metricsValue(fams, metrics.NameEvents, "type=Newchannel")
}

// An extension's calls end while the guard, overloaded, drops events: the
// Hangups are among them, and its next call counts the ended ones as live.
// That concurrent critical waits for Asterisk's channel list, read again
// after the drops, which shows them over: nothing is done to a legitimate
// user.
func TestDroppedHangupsMakeNoConcurrentCritical(t *testing.T) {
	t.Parallel()
	hold, release := make(chan struct{}), make(chan struct{})
	reload := make(chan struct{}, 1)
	h := startGuardOn(t, amitest.Options{WriteTimeout: 10 * time.Second}, func(c *config.Config) {
		c.AMI.QueueSize = 64
		c.Detection.Concurrent.Warning, c.Detection.Concurrent.Critical = 7, 8
		c.Detection.CallRate.BurstWarning, c.Detection.CallRate.BurstCritical = 1000, 1000
		c.Detection.CallRate.Warning, c.Detection.CallRate.Critical = 1000, 1000
	}, nil, func(o *Options) {
		o.Reload = reload
		o.Load = func() (*config.Config, error) { // holds the detector loop
			close(hold)
			<-release
			return nil, errors.New("held by the test")
		}
	})
	waitLoggedIn(t, h)
	g := <-h.guard
	waitFor(t, "the state rebuilt after the connect", 10*time.Second, func() bool {
		return len(logLines(h, "state rebuilt from Asterisk")) > 0
	})

	// SIP/201, authenticated, has seven calls up: a warning, no more.
	h.srv.Inject(securityFrame("SuccessfulAuth", "SIP", "201", "IPV4/UDP/192.0.2.31/5060", "UsingPassword: 1"))
	call := func(i int) (string, string) {
		return fmt.Sprintf("SIP/201-000003%02x", i), fmt.Sprintf("1795650000.%d", i)
	}
	for i := range 7 {
		ch, uid := call(i)
		h.srv.Inject(newchannelFrame(ch, uid, "02079460000", "201"))
	}
	waitFor(t, "the concurrent warning of SIP/201", 10*time.Second, func() bool {
		for _, a := range logLines(h, "fraud alert") {
			if a.Extension == "201" && a.Rule == "concurrent" && a.Severity == "warning" {
				return true
			}
		}
		return false
	})

	// The loop stalls, the queue fills, and the seven Hangups are dropped.
	reload <- struct{}{}
	<-hold
	st0 := g.sessionStats()
	const n = 500
	h.srv.Flood(peerStatusFrame("SIP/300", "Registered", "192.0.2.40:5060"), n)
	waitFor(t, "the guard to read the flood", 20*time.Second, func() bool { return g.sessionStats().Received-st0.Received >= n })
	d0 := g.sessionStats().Dropped
	for i := range 7 {
		ch, uid := call(i)
		h.srv.Inject(hangupFrame(ch, uid))
	}
	waitFor(t, "the Hangups dropped", 20*time.Second, func() bool { return g.sessionStats().Dropped >= d0+7 })
	dropped := g.sessionStats().Dropped
	seen := newchannels(t, g)
	close(release)

	// The eighth call: 201 has one call up.
	ch, uid := call(7)
	h.srv.Inject(newchannelFrame(ch, uid, "02079460000", "201"))
	waitFor(t, "the eighth call taken and a rebuild after the drops", 20*time.Second, func() bool {
		if newchannels(t, g) < seen+1 {
			return false
		}
		for _, l := range rawLogLines(h, "state rebuilt from Asterisk") {
			if d, _ := l["dropped"].(float64); uint64(d) >= dropped {
				return true
			}
		}
		return false
	})
	for _, a := range logLines(h, "fraud alert") {
		if a.Extension == "201" && a.Severity == "critical" {
			t.Errorf("a critical alert for SIP/201 after its Hangups were dropped: %+v", a)
		}
	}
	// If the critical was raised before the list came, it was held, and
	// the list dropped it.
	if len(rawLogLines(h, "concurrent alert held: events were dropped, so its live calls are checked against Asterisk's channel list before anything is done")) > 0 &&
		len(rawLogLines(h, "held concurrent alert dropped: Asterisk's channel list shows fewer live calls (their Hangup events were among those dropped)")) == 0 {
		t.Error("a held concurrent alert was neither dropped nor acted on")
	}
	if o, ok := outcomeOf(h, "hangup", "201"); ok {
		t.Errorf("SIP/201 hung up: %+v", o)
	}
	for _, a := range h.srv.Actions() {
		if a.Name == "Hangup" && strings.Contains(fmt.Sprint(a.Headers), "201") {
			t.Errorf("Hangup sent for SIP/201: %v", a.Headers)
		}
	}
}
