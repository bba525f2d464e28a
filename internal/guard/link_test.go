package guard

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/ami/client"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/metrics"
	"github.com/astguard/astguard/internal/policy"
)

// logLines returns the guard's log lines with the given message, parsed.
func rawLogLines(h *harness, msg string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(h.logs.String()))
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		var l map[string]any
		if json.Unmarshal(sc.Bytes(), &l) == nil && l["message"] == msg {
			out = append(out, l)
		}
	}
	return out
}

// attack injects a burst of calls of SIP/200 to one foreign number behind
// prefixes, from 203.0.113.50, each with the given caller name. The thief
// first registers with the stolen secret (SuccessfulAuth with a password:
// what lifts the cap on endpoints never seen authenticating); its INVITE
// challenge tells the fake Asterisk where the calls come from.
func attack(h *harness, uidBase int, callerName func(i int) string) {
	h.srv.Inject(securityFrame("SuccessfulAuth", "SIP", "200", "IPV4/UDP/203.0.113.50/5060", "UsingPassword: 1"))
	h.srv.Inject(securityFrame("ChallengeSent", "SIP", "sip:200@192.0.2.254", "IPV4/UDP/203.0.113.50/5060", "Challenge: 2e5503cf"))
	for i, prefix := range []string{"00", "011", "0011", "9011", "900", "000"} {
		uid := fmt.Sprintf("1795630%03d.%d", uidBase, i)
		h.srv.Inject(newchannelFrame(fmt.Sprintf("SIP/200-%08x", uidBase*16+i), uid, prefix+"442071838750", callerName(i)))
	}
}

// Caller names of 8 and 30 KiB on the stolen extension's calls are read
// whole: the calls are seen and the attack is stopped end to end.
func TestLongCallerNamesDoNotHideTheAttack(t *testing.T) {
	t.Parallel()
	h := startGuardOn(t, amitest.Options{}, nil, nil, nil)
	g := <-h.guard
	waitFor(t, "the event session", 10*time.Second, g.events.Connected)
	attack(h, 1, func(i int) string {
		return strings.Repeat("X", []int{8 << 10, 30 << 10}[i%2]) + "Channel: SIP/201-0000abcd"
	})
	waitFor(t, "the thief's address blocked, its calls hung up and its secret rotated", 20*time.Second, func() bool {
		s, _ := confSection(h.srv.Conf("sip.conf"), "200", "secret")
		return slices.Contains(blocked(h), netip.MustParseAddr("203.0.113.50")) && s != "Leaky200" &&
			!slices.ContainsFunc(h.srv.LiveChannels(), func(c string) bool { return strings.HasPrefix(c, "SIP/200-") })
	})
	for _, a := range h.srv.Actions() {
		for _, hd := range a.Headers {
			if strings.Contains(hd[1], "201") && a.Name != "Login" {
				t.Errorf("an action touched 201, named inside a caller name: %s %v", a.Name, a.Headers)
			}
		}
	}
	if st := g.events.Stats(); st.Oversized != 0 || st.Malformed != 0 {
		t.Errorf("messages rejected: %+v", st)
	}
}

// A server that stops reading the guard's actions: the events keep
// flowing (and are used), the actions time out, and the guard says so, in
// its typed state, on /healthz and once in its log; when the server reads
// again, it all clears.
func TestActionsTimingOutWhileEventsFlow(t *testing.T) {
	t.Parallel()
	h := startGuardOn(t, amitest.Options{}, func(c *config.Config) {
		c.AMI.ActionTimeout = config.Duration(time.Second)
	}, nil, nil)
	h.srv.StopReadingActions(true)
	stop := make(chan struct{})
	defer close(stop)
	go func() { // events keep coming
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			h.srv.Inject(fmt.Sprintf("Event: PeerStatus\r\nPrivilege: system,all\r\nChannelType: SIP\r\nPeer: SIP/%d\r\nPeerStatus: Registered\r\nAddress: 192.0.2.%d:5060\r\n", 300+i%50, 1+i%200))
		}
	}()
	g := <-h.guard
	waitFor(t, "the event session's actions to time out", 10*time.Second, func() bool { return g.events.Status().ActionsTimingOut })
	before := g.sessionStats().Queued
	waitFor(t, "events used while actions time out", 10*time.Second, func() bool { return g.sessionStats().Queued >= before+20 })
	st := g.events.Status()
	if st.State != client.StateUp || st.Connects != 1 || !st.ActionsTimingOut {
		t.Errorf("events session %+v: want up, first login, actions timing out", st)
	}
	health := g.Metrics().Health()
	if health.OK() || !slices.Contains(health.Reasons, "the AMI session events gets no reply to its actions (ami.action_timeout)") ||
		!health.Links["events"].ActionsTimingOut {
		t.Errorf("health %+v", health)
	}
	if l := rawLogLines(h, "AMI actions time out: Asterisk does not answer this session's actions"); len(l) == 0 || l[0]["level"] != "warn" || l[0]["session"] != "events" {
		t.Errorf("timeout lines %v", l)
	}
	h.srv.StopReadingActions(false)
	waitFor(t, "the actions answered again", 10*time.Second, func() bool { return !g.events.Status().ActionsTimingOut })
	waitFor(t, "a healthy guard", 10*time.Second, func() bool {
		return !slices.ContainsFunc(g.Metrics().Health().Reasons, func(r string) bool { return strings.Contains(r, "no reply to its actions") })
	})
	ofEvents := func(ls []map[string]any) int {
		return len(slices.DeleteFunc(ls, func(l map[string]any) bool { return l["session"] != "events" }))
	}
	if n := ofEvents(rawLogLines(h, "AMI actions time out: Asterisk does not answer this session's actions")); n != 1 {
		t.Errorf("%d timeout lines for the event session, want 1", n)
	}
	if n := ofEvents(rawLogLines(h, "AMI actions are answered again")); n != 1 {
		t.Errorf("%d lines for the event session saying its actions are answered again, want 1", n)
	}
}

// A server that sends faster than the guard handles: the reader keeps
// reading (Asterisk never sees a slow reader), the queue stays bounded,
// memory does not grow with what is sent, and every drop is counted.
func TestFloodKeepsMemoryBoundedAndCountsDrops(t *testing.T) {
	hold, release := make(chan struct{}), make(chan struct{})
	h := startGuardOn(t, amitest.Options{WriteTimeout: 10 * time.Second}, func(c *config.Config) {
		c.AMI.QueueSize = 1024
	}, nil, func(o *Options) {
		reload := make(chan struct{}, 1)
		o.Reload = reload
		o.Load = func() (*config.Config, error) { // holds the detector loop
			close(hold)
			<-release
			return nil, errors.New("held by the test")
		}
		reload <- struct{}{}
	})
	g := <-h.guard
	<-hold
	waitFor(t, "both sessions", 10*time.Second, func() bool { return g.events.Connected() && g.urgent.Connected() })
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	st0 := g.sessionStats()

	// 53 MiB sent; the heap may grow by 8 MiB (it grows by under 1 MiB):
	// a guard that kept a sixth of what it read would show.
	const n = 50_000
	frame := "Event: PeerStatus\r\nPrivilege: system,all\r\nChannelType: SIP\r\nPeer: SIP/200\r\nPeerStatus: Registered\r\n" +
		"Address: 192.0.2.10:5060\r\nPadding: " + strings.Repeat("p", 1000) + "\r\n"
	sent := h.srv.Flood(frame, n)
	for _, v := range sent {
		if len(sent) != 1 || v != n {
			t.Fatalf("flood sent %v", sent)
		}
	}
	waitFor(t, "the guard to read the flood", 60*time.Second, func() bool { return g.sessionStats().Received-st0.Received >= n })
	runtime.GC()
	runtime.ReadMemStats(&m1)
	st := g.sessionStats()
	queued, dropped := st.Queued-st0.Queued, st.Dropped-st0.Dropped
	// The flood, and perhaps the SuccessfulAuth of the urgent session's
	// login, broadcast to the event session but read after st0.
	if queued+dropped < n || queued+dropped > n+1 || queued > 1024 || len(g.queue) != cap(g.queue) {
		t.Errorf("%d queued, %d dropped of %d, queue %d/%d", queued, dropped, n, len(g.queue), cap(g.queue))
	}
	if grew := int64(m1.HeapInuse) - int64(m0.HeapInuse); grew > 8<<20 {
		t.Errorf("the heap grew by %d MiB while %d MiB were sent", grew>>20, n*len(frame)>>20)
	}
	if es := g.events.Status(); es.Connects != 1 || es.State != client.StateUp {
		t.Errorf("the event session %+v: Asterisk dropped a slow reader?", es)
	}
	close(release)
	waitFor(t, "the queue to drain", 30*time.Second, func() bool { return len(g.queue) == 0 })
	gathered, err := g.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	fams := map[string]*dto.MetricFamily{}
	for _, f := range gathered {
		fams[f.GetName()] = f
	}
	if v := metricsValue(fams, metrics.NameEventsDropped); uint64(v) != st.Dropped {
		t.Errorf("%s = %v, want %d", metrics.NameEventsDropped, v, st.Dropped)
	}
	lines := rawLogLines(h, "event queue full: events dropped, the guard is partly blind (raise ami.queue_size or give it CPU)")
	if len(lines) == 0 || lines[0]["level"] != "error" || lines[0]["dropped"] != float64(1) {
		t.Errorf("drop lines %v", lines)
	}
	for _, l := range lines {
		if d := l["dropped"].(float64); d != 1 && d != 10 && d != 100 && d != 1000 && d != 10000 && d != 100000 {
			t.Errorf("a drop line at %v, not a power of ten", d)
		}
	}
}

// Asterisk restarted in the middle of the attack, refusing connections for
// 5 s of the recording (2.5 s at twice its pace): the guard backs off, logs
// in again, rebuilds its view, and the attack is still stopped. Being
// unreachable is said once per session.
func TestAsteriskRestartMidAttack(t *testing.T) {
	t.Parallel()
	h := startGuard(t, "attack-mixed.ami", 2, func(c *config.Config) {
		c.AMI.ReconnectInterval = config.Duration(100 * time.Millisecond)
		c.AMI.ReconnectMax = config.Duration(time.Second)
	})
	g := <-h.guard
	waitFor(t, "the thief's first call", 20*time.Second, func() bool {
		return slices.ContainsFunc(h.srv.LiveChannels(), func(c string) bool { return strings.HasPrefix(c, "SIP/200-") })
	})
	h.srv.Down()
	down := time.Now()
	waitFor(t, "the guard to find Asterisk unreachable", 10*time.Second, func() bool {
		return g.events.Status().Problem == client.ProblemUnreachable
	})
	time.Sleep(2500*time.Millisecond - time.Since(down)) // the scenario: Asterisk takes that long to come back
	if err := h.srv.Up(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "127.0.0.2 and 127.0.0.5 blocked after the restart", 30*time.Second, func() bool {
		b := blocked(h)
		return slices.Contains(b, netip.MustParseAddr("127.0.0.2")) && slices.Contains(b, netip.MustParseAddr("127.0.0.5"))
	})
	waitFor(t, "200's secret rotated", 20*time.Second, func() bool {
		s, _ := confSection(h.srv.Conf("sip.conf"), "200", "secret")
		return s != "Leaky200"
	})
	if st := g.events.Status(); st.Connects != 2 || st.State != client.StateUp {
		t.Errorf("events session %+v", st)
	}
	rebuilt := 0
	for _, a := range h.srv.Actions() {
		if a.Name == "CoreShowChannels" {
			rebuilt++
		}
	}
	if rebuilt != 2 {
		t.Errorf("CoreShowChannels sent %d times, want once per login of the event session (2)", rebuilt)
	}
	for _, session := range []string{"events", "urgent"} {
		n := 0
		for _, l := range rawLogLines(h, "AMI unreachable: the guard sees nothing until it connects") {
			if l["session"] == session {
				n++
				if l["level"] != "error" || !strings.Contains(l["error"].(string), "connection refused") {
					t.Errorf("line %v", l)
				}
			}
		}
		if n != 1 {
			t.Errorf("%d unreachable lines for %s, want 1", n, session)
		}
	}
}

// A wrong secret: each session says so once, with Asterisk's reason, and
// /healthz says why the guard is blind.
func TestWrongSecretIsLoud(t *testing.T) {
	t.Parallel()
	h := startGuardOn(t, amitest.Options{LoginFailDelay: time.Millisecond}, func(c *config.Config) {
		c.AMI.Secret = "not-the-secret"
		c.AMI.ReconnectInterval = config.Duration(10 * time.Millisecond)
		c.AMI.ReconnectMax = config.Duration(50 * time.Millisecond)
	}, nil, nil)
	g := <-h.guard
	waitFor(t, "several refused logins", 10*time.Second, func() bool {
		n := 0
		for _, a := range h.srv.Actions() {
			if a.Name == "Login" {
				n++
			}
		}
		return n >= 6
	})
	lines := rawLogLines(h, "AMI login refused: check ami.username, the secret and the user's permit/deny in manager.conf")
	if len(lines) != 2 || lines[0]["asterisk_message"] != "Authentication failed" || lines[0]["level"] != "error" {
		t.Errorf("login refused lines %v, want one per session", lines)
	}
	st := g.events.Status()
	if st.State != client.StateDown || st.Problem != client.ProblemLoginRefused {
		t.Errorf("events session %+v", st)
	}
	if r := g.Metrics().Health().Reasons; !slices.Contains(r, "the AMI session events is not logged in (login_refused: Authentication failed)") {
		t.Errorf("health reasons %q", r)
	}
	if strings.Contains(h.logs.String(), "not-the-secret") {
		t.Error("the secret is in the log")
	}
}

// The guard adapts to the AMI version: no SIPpeers on Asterisk 21 and
// later (no chan_sip there; asking raises a security event), no
// PJSIPShowContacts before 16, no Hangup by /regex/ on 1.8, and a warning
// that Asterisk before 12 shows no security events.
func TestVersionAware(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		banner          string
		sipPeers, pjsip bool
		regex, warned   bool
	}{
		{amitest.Banner22, false, true, true, false},
		{amitest.DefaultBanner, true, true, true, false},
		{"Asterisk Call Manager/1.3", true, false, true, true},
		{"Asterisk Call Manager/1.1", true, false, false, true},
	} {
		t.Run(tc.banner, func(t *testing.T) {
			t.Parallel()
			h := startGuardOn(t, amitest.Options{Banner: tc.banner}, nil, nil, nil)
			waitFor(t, "the resync", 10*time.Second, func() bool { return strings.Contains(h.logs.String(), "state rebuilt from Asterisk") })
			attack(h, 2, func(int) string { return "200" })
			// The hang-up of the extension's calls (not that of a new call
			// of the stopped extension, which goes by name on every
			// version).
			waitFor(t, "the hang-up of 200", 20*time.Second, func() bool {
				return len(h.outcomes.list(func(o *Outcome) bool {
					return o.Action == policy.Hangup && o.Result == policy.Done && o.Target == "SIP/200"
				})) > 0
			})
			names := map[string]bool{}
			regex := false
			for _, a := range h.srv.Actions() {
				names[a.Name] = true
				if ch, _ := actionHeader(a, "Channel"); a.Name == "Hangup" && strings.HasPrefix(ch, "/") {
					regex = true
				}
			}
			if names["SIPpeers"] != tc.sipPeers || names["PJSIPShowContacts"] != tc.pjsip || regex != tc.regex {
				t.Errorf("SIPpeers %v, PJSIPShowContacts %v, Hangup by regex %v", names["SIPpeers"], names["PJSIPShowContacts"], regex)
			}
			warned := len(rawLogLines(h, "this Asterisk (before 12) sends no security events over AMI: password guessing, refused calls and the addresses "+
				"extensions authenticate from are invisible; only calls and registrations are watched (upgrade Asterisk, or run fail2ban on its security log)"))
			if (warned == 1) != tc.warned || warned > 1 {
				t.Errorf("%d warnings about security events", warned)
			}
		})
	}
}

func actionHeader(a amitest.Action, key string) (string, bool) {
	for _, h := range a.Headers {
		if strings.EqualFold(h[0], key) {
			return h[1], true
		}
	}
	return "", false
}

// --record writes each message's bytes as they arrived: headers in their
// order, repeated keys kept, replies included.
func TestRecordingIsVerbatim(t *testing.T) {
	t.Parallel()
	rec := filepath.Join(t.TempDir(), "rec.ami")
	h := startGuardOn(t, amitest.Options{}, nil, nil, func(o *Options) { o.Record = rec })
	g := <-h.guard
	waitFor(t, "the event session", 10*time.Second, g.events.Connected)
	frame := "Event: Newstate\r\nPrivilege: call,all\r\nChannel: SIP/201-00000001\r\nChanVariable: A=1\r\nChanVariable: B=2\r\nUniqueid: 1.1\r\n"
	h.srv.Inject(frame)
	// The only PeerStatus of the session, after the frame: once the
	// detector has counted it, the loop has taken the frame too.
	h.srv.Inject("Event: PeerStatus\r\nPrivilege: system,all\r\nChannelType: SIP\r\nPeer: SIP/201\r\nPeerStatus: Registered\r\nAddress: 192.0.2.10:5060\r\n")
	waitFor(t, "the frame taken by the detector loop", 10*time.Second, func() bool {
		return metricsValue(gathered(t, g), metrics.NameEvents, "type=PeerStatus") >= 1
	})
	h.stop(t) // the loop finishes the message it took, and closes the recording
	raw, _ := os.ReadFile(rec)
	if !bytes.Contains(raw, []byte(frame+"TimeReceived: ")) {
		t.Errorf("the frame is not in the recording as it was sent: %q", raw)
	}
	if !bytes.HasPrefix(raw, []byte(amitest.DefaultBanner+"\r\n")) || !bytes.Contains(raw, []byte("Response: Success\r\nActionID: events-Login\r\nMessage: Authentication accepted\r\n")) {
		t.Errorf("the recording lacks the banner or the login reply: %.200q", raw)
	}
}

// Stopping the guard leaves no goroutine of its own behind, after
// reconnects too.
func TestStopLeavesNoGoroutine(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	h := startGuardOn(t, amitest.Options{}, func(c *config.Config) {
		c.AMI.ReconnectInterval = config.Duration(10 * time.Millisecond)
	}, nil, nil)
	g := <-h.guard
	for range 3 {
		waitFor(t, "the logins", 10*time.Second, func() bool { return g.events.Connected() && g.urgent.Connected() })
		before := g.events.Status().Connects
		h.srv.DropSessions()
		waitFor(t, "a new login", 10*time.Second, func() bool { return g.events.Status().Connects > before })
	}
	h.stop(t)
	h.srv.Close()
}

// The recording holds every reply as received but for the secrets: the
// GetConfig replies of the rotations (the old secret of each extension in
// clear) are written with [redacted] in place of the value.
func TestRecordingRedactsSecrets(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(transcripts + "attack-mixed.ami")
	if err != nil {
		t.Fatal(err)
	}
	rec := filepath.Join(t.TempDir(), "rec.ami")
	h := startGuardOn(t, amitest.Options{Transcript: bytes.NewReader(data), Speed: 4, AutoPlay: true}, nil, nil,
		func(o *Options) { o.Record = rec })
	waitFor(t, "both secrets rotated", 30*time.Second, func() bool {
		return h.outcomes.has(policy.RotateSecret, policy.Done, policy.ExtensionKey(ami.TechSIP, "200")) &&
			h.outcomes.has(policy.RotateSecret, policy.Done, policy.ExtensionKey(ami.TechPJSIP, "300"))
	})
	h.stop(t)
	raw, err := os.ReadFile(rec)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"Leaky200", "Leaky300", "Strong201secret"} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("the recording holds the secret %s", secret)
		}
	}
	for _, want := range []string{": secret=[redacted]\r\n", ": password=[redacted]\r\n"} {
		if !bytes.Contains(raw, []byte(want)) {
			t.Errorf("the recording lacks the GetConfig line %q", want)
		}
	}
}
