package metrics

import (
	"context"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/client"
	"github.com/astguard/astguard/internal/detector"
)

// clock is a fake clock the test moves by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// fake is the guard's side: sessions, queue, bans, last event.
type fake struct {
	clock               *clock
	events, urgent      atomic.Bool
	connects, urgentCon atomic.Uint64
	timeouts            atomic.Uint64 // the urgent session's
	urgentTimingOut     atomic.Bool
	eventsProblem       atomic.Pointer[client.Status] // the events session's state while down, if set
	queue, bans         atomic.Int64
	malformed           atomic.Uint64
	oversized           atomic.Uint64
	last                atomic.Int64 // Unix ns, 0: none
}

// status builds a session's link state from the fake's fields.
func status(up *atomic.Bool, connects *atomic.Uint64, down *atomic.Pointer[client.Status], timingOut *atomic.Bool) func() client.Status {
	return func() client.Status {
		s := client.Status{State: client.StateUp, Connects: connects.Load()}
		if !up.Load() {
			s.State = client.StateDown
			if down != nil && down.Load() != nil {
				s = *down.Load()
				s.Connects = connects.Load()
			}
		}
		s.ActionsTimingOut = timingOut != nil && timingOut.Load()
		return s
	}
}

func newFake(t *testing.T, silence time.Duration) (*fake, *Metrics) {
	t.Helper()
	f := &fake{clock: &clock{t: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}}
	f.events.Store(true)
	f.urgent.Store(true)
	m := New(Options{
		Sessions: []Session{
			{Name: "events", Status: status(&f.events, &f.connects, &f.eventsProblem, nil), Essential: true},
			{Name: "urgent", Status: status(&f.urgent, &f.urgentCon, nil, &f.urgentTimingOut), ActionTimeouts: f.timeouts.Load},
		},
		QueueLen:  func() int { return int(f.queue.Load()) },
		QueueCap:  65536,
		Bans:      func() int { return int(f.bans.Load()) },
		Malformed: f.malformed.Load,
		Oversized: f.oversized.Load,
		LastEvent: func() time.Time {
			if ns := f.last.Load(); ns != 0 {
				return time.Unix(0, ns)
			}
			return time.Time{}
		},
		SilenceAlarm: silence,
		Now:          f.clock.Now,
	})
	return f, m
}

// event is an event arriving now.
func (f *fake) event() { f.last.Store(f.clock.Now().UnixNano()) }

func checkHealth(t *testing.T, m *Metrics, step string, want ...string) Health {
	t.Helper()
	h := m.Health()
	if !slices.Equal(h.Reasons, want) {
		t.Errorf("%s: reasons\n got %q\nwant %q", step, h.Reasons, want)
	}
	if ok := len(want) == 0; h.OK() != ok || (h.Status == "ok") != ok || (!ok && h.Status != "unhealthy") {
		t.Errorf("%s: status %q with reasons %q", step, h.Status, h.Reasons)
	}
	return h
}

func TestHealthSilence(t *testing.T) {
	f, m := newFake(t, 5*time.Minute)

	// No event yet: counted from the start.
	h := checkHealth(t, m, "at the start")
	if h.LastEvent != nil || h.SinceEvent != 0 || h.SilenceAlarm != "5m" {
		t.Errorf("at the start: %+v", h)
	}
	f.clock.Add(5*time.Minute - time.Millisecond)
	h = checkHealth(t, m, "just before the alarm")
	if h.SinceEvent != 299.999 {
		t.Errorf("seconds_since_event = %v, want 299.999", h.SinceEvent)
	}
	f.clock.Add(time.Millisecond)
	checkHealth(t, m, "no event since the start", "no event since the guard started 5m ago (silence_alarm 5m)")

	// An event clears it; silence_alarm after the last one raises it again.
	f.event()
	h = checkHealth(t, m, "after an event")
	if h.LastEvent == nil || !h.LastEvent.Equal(f.clock.Now()) || h.SinceEvent != 0 {
		t.Errorf("after an event: last_event %v, seconds_since_event %v", h.LastEvent, h.SinceEvent)
	}
	f.clock.Add(4 * time.Minute)
	f.event()
	f.clock.Add(4*time.Minute + 59*time.Second)
	checkHealth(t, m, "4m59s after the last event")
	f.clock.Add(time.Second)
	checkHealth(t, m, "5m after the last event", "no event for 5m (silence_alarm 5m)")
	f.clock.Add(time.Hour + 30*time.Minute)
	checkHealth(t, m, "1h35m after the last event", "no event for 1h35m (silence_alarm 5m)")

	// A reload lengthens the alarm.
	m.SetSilenceAlarm(2 * time.Hour)
	h = checkHealth(t, m, "after a reload to 2h")
	if h.SilenceAlarm != "2h" {
		t.Errorf("silence_alarm = %q, want 2h", h.SilenceAlarm)
	}
}

func TestHealthSession(t *testing.T) {
	f, m := newFake(t, time.Minute)
	f.event()

	// The urgent session is reported but does not make the guard blind.
	f.urgent.Store(false)
	h := checkHealth(t, m, "urgent down")
	if !h.AMI["events"] || h.AMI["urgent"] || len(h.AMI) != 2 {
		t.Errorf("ami = %v", h.AMI)
	}
	f.events.Store(false)
	checkHealth(t, m, "events down", "the AMI session events is not logged in")
	f.clock.Add(time.Minute)
	checkHealth(t, m, "events down and silent",
		"the AMI session events is not logged in",
		"no event for 1m (silence_alarm 1m)")
	f.events.Store(true)
	f.event()
	checkHealth(t, m, "reconnected")

	// Down with a cause: the reason says it; /healthz shows the link.
	f.eventsProblem.Store(&client.Status{State: client.StateDown, Problem: client.ProblemLoginRefused, Detail: "Authentication failed"})
	f.events.Store(false)
	h = checkHealth(t, m, "login refused", "the AMI session events is not logged in (login_refused: Authentication failed)")
	if l := h.Links["events"]; l.State != "down" || l.Problem != "login_refused" || l.Detail != "Authentication failed" {
		t.Errorf("links[events] = %+v", l)
	}
	f.events.Store(true)

	// Actions that time out, on either session, make it unhealthy: the
	// guard can no longer act.
	f.urgent.Store(true)
	f.urgentTimingOut.Store(true)
	h = checkHealth(t, m, "urgent actions time out", "the AMI session urgent gets no reply to its actions (ami.action_timeout)")
	if l := h.Links["urgent"]; l.State != "up" || !l.ActionsTimingOut {
		t.Errorf("links[urgent] = %+v", l)
	}
	f.urgentTimingOut.Store(false)
	checkHealth(t, m, "urgent answered again")
}

func TestHealthDrops(t *testing.T) {
	f, m := newFake(t, 5*time.Minute)
	f.event()
	m.Dropped(1)
	m.Dropped(2)
	h := checkHealth(t, m, "dropped", "events dropped within the last 5m: the queue to the detector was full (2 dropped since the start)")
	if h.Dropped != 2 || h.LastDrop == nil || !h.LastDrop.Equal(f.clock.Now()) {
		t.Errorf("events_dropped %d, last_drop %v", h.Dropped, h.LastDrop)
	}
	// Events keep arriving: the drop alone keeps it unhealthy for silence_alarm.
	for range 4 {
		f.clock.Add(time.Minute)
		f.event()
	}
	f.clock.Add(time.Minute - time.Second)
	f.event()
	checkHealth(t, m, "4m59s after the drop", "events dropped within the last 5m: the queue to the detector was full (2 dropped since the start)")
	f.clock.Add(time.Second)
	f.event()
	h = checkHealth(t, m, "5m after the drop")
	if h.Dropped != 2 {
		t.Errorf("events_dropped = %d, want 2 (since the start)", h.Dropped)
	}
	// The count never goes back (a stale report).
	m.Dropped(1)
	if h := m.Health(); h.Dropped != 2 {
		t.Errorf("events_dropped = %d after a lower count, want 2", h.Dropped)
	}
}

func TestHealthHandler(t *testing.T) {
	f, m := newFake(t, time.Minute)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	get := func() (int, map[string]any) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		var body map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body
	}

	f.event()
	code, body := get()
	if code != http.StatusOK || body["status"] != "ok" || body["reasons"] != nil {
		t.Errorf("healthy: %d %v", code, body)
	}
	if ami, _ := body["ami"].(map[string]any); ami["events"] != true || ami["urgent"] != true {
		t.Errorf("ami = %v", body["ami"])
	}
	for _, k := range []string{"last_event", "seconds_since_event", "events_dropped", "silence_alarm", "links"} {
		if _, ok := body[k]; !ok {
			t.Errorf("no %s in %v", k, body)
		}
	}

	f.events.Store(false)
	f.clock.Add(2 * time.Minute)
	code, body = get()
	want := []any{"the AMI session events is not logged in", "no event for 2m (silence_alarm 1m)"}
	if code != http.StatusServiceUnavailable || body["status"] != "unhealthy" || !slices.Equal(body["reasons"].([]any), want) {
		t.Errorf("blind: %d %v", code, body)
	}

	resp, err := http.Post(srv.URL+"/healthz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz: %d", resp.StatusCode)
	}
}

// scrape reads /metrics as Prometheus does.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// value is the value of the series of name with exactly these labels
// (name=value pairs); for a histogram, its count.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("no metric %s", name)
	}
next:
	for _, m := range f.GetMetric() {
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
	t.Fatalf("no series %s%v", name, labels)
	return 0
}

func TestScrape(t *testing.T) {
	f, m := newFake(t, 5*time.Minute)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()

	fams := scrape(t, srv.URL+"/metrics")
	// Every series exists from the start, at 0.
	for _, c := range []struct {
		name   string
		labels []string
	}{
		{NameEvents, []string{"type=Newchannel"}},
		{NameEvents, []string{"type=InvalidPassword"}},
		{NameEvents, []string{"type=Security"}},
		{NameEvents, []string{"type=Unknown"}},
		{NameAlerts, []string{"rule=call_rate", "severity=warning"}},
		{NameAlerts, []string{"rule=new_source", "severity=critical"}},
		{NameActions, []string{"action=block_ip", "result=done"}},
		{NameActions, []string{"action=rotate_secret", "result=would"}},
		{NameActionDuration, []string{"action=hangup"}},
		{NameEventsDropped, nil},
		{NameAMIRejected, []string{"reason=malformed"}},
		{NameAMIRejected, []string{"reason=oversized"}},
		{NameAMITimeouts, []string{"session=urgent"}},
		{NameLastEvent, nil},
		{NameQueueDepth, nil},
		{NameBansActive, nil},
		{NameTrackedKeys, []string{"kind=extension"}},
		{NameTrackedKeys, []string{"kind=address"}},
		{NameKeysEvicted, nil},
		{NameKeysUntracked, nil},
		{NameAMIConnects, []string{"session=events"}},
	} {
		if v := value(t, fams, c.name, c.labels...); v != 0 {
			t.Errorf("%s%v = %v at the start, want 0", c.name, c.labels, v)
		}
	}
	if v := value(t, fams, NameQueueCapacity); v != 65536 {
		t.Errorf("queue capacity %v", v)
	}
	if v := value(t, fams, NameAMIConnected, "session=urgent"); v != 1 {
		t.Errorf("urgent connected = %v", v)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if fams[name] == nil {
			t.Errorf("no %s", name)
		}
	}

	// Traffic.
	for range 3 {
		m.Event(ami.KindNewchannel, 0)
	}
	m.Event(ami.KindHangup, 0)
	m.Event(ami.KindSecurity, ami.SecInvalidPassword)
	m.Event(ami.KindSecurity, ami.SecInvalidPassword)
	m.Event(ami.KindSecurity, ami.SecOther)
	m.Event(ami.KindUnknown, 0)
	m.Alert(detector.RuleAuthFailures, detector.Critical)
	m.Alert(detector.RuleCallRate, detector.Warning)
	m.Alert(detector.RuleCallRate, detector.Warning)
	m.Action("block_ip", ResultDone, 30*time.Millisecond)
	m.Action("block_ip", ResultFailed, 2*time.Second)
	m.Action("hangup", ResultWould, 0)
	m.Dropped(7)
	m.SetDetector(detector.Stats{Extensions: 4, Addresses: 9, Evicted: 2, Untracked: 1})
	f.malformed.Store(3)
	f.oversized.Store(1)
	f.timeouts.Store(4)
	f.queue.Store(12)
	f.bans.Store(2)
	f.connects.Store(2)
	f.events.Store(false)
	f.event()

	fams = scrape(t, srv.URL+"/metrics")
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{NameEvents, []string{"type=Newchannel"}, 3},
		{NameEvents, []string{"type=Hangup"}, 1},
		{NameEvents, []string{"type=InvalidPassword"}, 2},
		{NameEvents, []string{"type=Security"}, 1},
		{NameEvents, []string{"type=Unknown"}, 1},
		{NameEvents, []string{"type=DialBegin"}, 0},
		{NameAlerts, []string{"rule=auth_failures", "severity=critical"}, 1},
		{NameAlerts, []string{"rule=call_rate", "severity=warning"}, 2},
		{NameAlerts, []string{"rule=call_rate", "severity=critical"}, 0},
		{NameActions, []string{"action=block_ip", "result=done"}, 1},
		{NameActions, []string{"action=block_ip", "result=failed"}, 1},
		{NameActions, []string{"action=hangup", "result=would"}, 1},
		{NameActionDuration, []string{"action=block_ip"}, 2},
		{NameActionDuration, []string{"action=hangup"}, 0}, // would: nothing timed
		{NameEventsDropped, nil, 7},
		{NameAMIRejected, []string{"reason=malformed"}, 3},
		{NameAMIRejected, []string{"reason=oversized"}, 1},
		{NameAMITimeouts, []string{"session=urgent"}, 4},
		{NameAMITimeouts, []string{"session=events"}, 0},
		{NameLastEvent, nil, float64(f.clock.Now().Unix())},
		{NameQueueDepth, nil, 12},
		{NameBansActive, nil, 2},
		{NameTrackedKeys, []string{"kind=extension"}, 4},
		{NameTrackedKeys, []string{"kind=address"}, 9},
		{NameKeysEvicted, nil, 2},
		{NameKeysUntracked, nil, 1},
		{NameAMIConnected, []string{"session=events"}, 0},
		{NameAMIConnected, []string{"session=urgent"}, 1},
		{NameAMIConnects, []string{"session=events"}, 2},
	} {
		if v := value(t, fams, c.name, c.labels...); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	for _, s := range fams[NameActionDuration].GetMetric() {
		if sum := s.GetHistogram().GetSampleSum(); s.GetLabel()[0].GetValue() == "block_ip" && math.Abs(sum-2.03) > 1e-9 {
			t.Errorf("block_ip duration sum %v, want 2.03", sum)
		}
	}
}

// Whatever the kinds and types, the event counter has one series per name
// the guard knows: nothing from the traffic becomes a label.
func TestEventLabelsBounded(t *testing.T) {
	_, m := newFake(t, time.Minute)
	for k := range 256 {
		for s := range 256 {
			m.Event(ami.Kind(k), ami.SecurityType(s))
		}
	}
	m.Alert(detector.Rule(200), detector.Severity(9))
	want := []string{
		"Unknown", "Newchannel", "DialBegin", "DialEnd", "Hangup", "PeerStatus", "ContactStatus", "FullyBooted",
		"Security", "InvalidAccountID", "FailedACL", "InvalidPassword", "ChallengeResponseFailed", "ChallengeSent",
		"SuccessfulAuth", "RequestNotAllowed", "RequestBadFormat",
	}
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var total float64
	for _, f := range fams {
		switch f.GetName() {
		case NameEvents:
			for _, s := range f.GetMetric() {
				got = append(got, s.GetLabel()[0].GetValue())
				total += s.GetCounter().GetValue()
			}
		case NameAlerts:
			if n := len(f.GetMetric()); n != 15 { // 7 rules x 2 severities, and unknown
				t.Errorf("%d alert series, want 15", n)
			}
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("event types\n got %v\nwant %v", got, want)
	}
	if total != 256*256 {
		t.Errorf("%v events counted, want %d", total, 256*256)
	}
}

func TestLint(t *testing.T) {
	_, m := newFake(t, time.Minute)
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "astguard_") {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	}
}

func TestEventDoesNotAllocate(t *testing.T) {
	_, m := newFake(t, time.Minute)
	if n := testing.AllocsPerRun(1000, func() {
		m.Event(ami.KindNewchannel, 0)
		m.Event(ami.KindSecurity, ami.SecChallengeSent)
	}); n != 0 {
		t.Errorf("Event allocates %v times", n)
	}
}

func BenchmarkEvent(b *testing.B) {
	m := New(Options{})
	for b.Loop() {
		m.Event(ami.KindNewchannel, 0)
	}
}

func TestNil(t *testing.T) {
	var m *Metrics
	m.Event(ami.KindHangup, 0)
	m.Alert(detector.RuleCallRate, detector.Critical)
	m.Action("hangup", ResultDone, time.Second)
	m.Dropped(1)
	m.SetDetector(detector.Stats{})
	m.SetSilenceAlarm(time.Minute)
}

func TestServer(t *testing.T) {
	f, m := newFake(t, time.Minute)
	f.event()
	s, err := Listen("127.0.0.1:0", m.Handler())
	if err != nil {
		t.Fatal(err)
	}
	addr := s.Addr().String()

	// A second bind of the same address fails at once.
	if _, err := Listen(addr, m.Handler()); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("second Listen(%s): %v", addr, err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	for _, path := range []string{"/metrics", "/healthz"} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s %s", path, resp.Status, body)
		}
	}
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /: %s", resp.Status)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
		resp.Body.Close()
		t.Error("still serving after shutdown")
	}
}
