package loadgen

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/testenv"
)

// TestMain lets Run start this test binary again as the guard under test.
func TestMain(m *testing.M) {
	if IsGuardChild() {
		os.Exit(GuardChild(os.Args[1:], os.Stderr))
	}
	os.Exit(m.Run())
}

// readFrames parses a stream of frames (no banner) with the project's reader.
func readFrames(t *testing.T, data []byte, banner bool) [][]string {
	t.Helper()
	r := ami.NewReader(bytes.NewReader(data), ami.ReaderOptions{})
	if banner {
		if _, err := r.ReadBanner(); err != nil {
			t.Fatal(err)
		}
	}
	var out [][]string
	var m ami.Message
	for {
		err := r.Next(&m)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for i := 0; i < m.Len(); i++ {
			if k := string(m.Key(i)); k != "TimeReceived" {
				keys = append(keys, k)
			}
		}
		out = append(out, keys)
	}
}

// TestLegitCallFramesAreReal renders one legitimate call (every class, as
// attack-mixed.ami was recorded) and checks, frame by frame, that its
// header set and order are those of 201's call in the real transcript, read
// straight from the fixture file.
func TestLegitCallFramesAreReal(t *testing.T) {
	tpl, err := loadTemplates()
	if err != nil {
		t.Fatal(err)
	}
	real, err := os.ReadFile("../../testdata/transcripts/attack-mixed.ami")
	if err != nil {
		t.Fatal(err)
	}
	realFrames := readFrames(t, real, true)
	// Every key list of the real transcript, to find each frame's twin.
	seen := map[string]bool{}
	for _, k := range realFrames {
		seen[strings.Join(k, "\x00")] = true
	}

	cfg := config.Default()
	g := newGenerator(Options{Rate: 1000, Duration: time.Second, Extensions: 10, Seed: 1}, tpl, cfg)
	b := &batch{mask: classAll, now: time.Now(), tv: eventTV(time.Now())}
	g.legitCall(b) // first call of its extension: registration, then the call
	var c *call
	for _, s := range g.wheel {
		if len(s) > 0 {
			c = s[0]
		}
	}
	if c == nil {
		t.Fatal("no call scheduled")
	}
	g.teardown(c, b)
	got := readFrames(t, b.buf, false)

	// The real sequence: 201's registration, then its call as the template
	// extraction found it.
	var want [][]string
	for _, f := range tpl.rawSIPRegister {
		want = append(want, keysOf(&f))
	}
	for _, f := range tpl.sipCall.rawSetup {
		want = append(want, keysOf(&f))
	}
	for _, f := range tpl.sipCall.rawTeardown {
		want = append(want, keysOf(&f))
	}
	if len(got) != len(want) {
		t.Fatalf("generated %d frames, the real call has %d", len(got), len(want))
	}
	for i := range got {
		if !slices.Equal(got[i], want[i]) {
			t.Fatalf("frame %d: keys\n%v\nwant\n%v", i, got[i], want[i])
		}
		if !seen[strings.Join(got[i], "\x00")] {
			t.Fatalf("frame %d (%s): no frame of attack-mixed.ami has these keys in this order", i, got[i][0])
		}
	}
	// The call is a real call: the events the guard decodes say so.
	events := []string{}
	r := ami.NewReader(bytes.NewReader(b.buf), ami.ReaderOptions{})
	var m ami.Message
	var ev ami.Event
	for r.Next(&m) == nil {
		events = append(events, m.Get("Event"))
		if ami.Decode(&m, &ev) && ev.Kind == ami.KindNewchannel && m.Get("Uniqueid") == m.Get("Linkedid") {
			if !strings.HasPrefix(ev.Channel, "SIP/"+c.vals[pEXT]+"-") || m.Get("Exten") != c.vals[pNUM] {
				t.Fatalf("Newchannel: channel %q exten %q", ev.Channel, m.Get("Exten"))
			}
		}
	}
	for _, e := range []string{"ChallengeSent", "PeerStatus", "SuccessfulAuth", "Newchannel", "VarSet", "DialBegin", "Newstate", "DialEnd", "BridgeEnter", "BridgeLeave", "Hangup"} {
		if !slices.Contains(events, e) {
			t.Fatalf("no %s in the generated call: %v", e, events)
		}
	}
	if events[len(events)-1] != "Hangup" || events[len(events)-2] != "Hangup" {
		t.Fatalf("the call does not end with the Hangup of both legs: %v", events[len(events)-3:])
	}
	// And with the guard's mask, dialplan and cdr frames are left out.
	b2 := &batch{mask: classCall | classSecurity | classSystem, now: time.Now(), tv: eventTV(time.Now())}
	g.teardown(c, b2)
	for _, k := range readFrames(t, b2.buf, false) {
		if k[0] != "Event" {
			t.Fatal("not an event")
		}
	}
	if bytes.Contains(b2.buf, []byte("Event: VarSet")) || bytes.Contains(b2.buf, []byte("Event: Cdr")) {
		t.Fatal("VarSet or Cdr sent although the mask excludes them")
	}
}

func keysOf(f *rawFrame) []string {
	var k []string
	for _, h := range f.hdrs {
		k = append(k, h[0])
	}
	return k
}

// TestAttackFramesAreReal checks the other templates against the fixture.
func TestAttackFramesAreReal(t *testing.T) {
	tpl, err := loadTemplates()
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, tfs []tframe, raws []rawFrame) {
		var vals [numPH]string
		for i := range vals {
			vals[i] = "x"
		}
		for i := range tfs {
			got := readFrames(t, tfs[i].render(nil, &vals), false)
			if len(got) != 1 || !slices.Equal(got[0], keysOf(&raws[i])) {
				t.Fatalf("%s frame %d: %v, want %v", name, i, got, keysOf(&raws[i]))
			}
		}
	}
	check("sip register", tpl.sipRegister, tpl.rawSIPRegister)
	check("pjsip register", tpl.pjsipRegister, tpl.rawPJSIPRegister)
	check("auth failure", tpl.sipAuthFail, tpl.rawSIPAuthFail)
	check("failed acl", []tframe{tpl.failedACL}, []rawFrame{tpl.rawFailedACL})
	check("pjsip call", tpl.pjsipCall.setup, tpl.pjsipCall.rawSetup)
	check("pjsip teardown", tpl.pjsipCall.teardown, tpl.pjsipCall.rawTeardown)
	if tpl.pjsipCall.setup[0].event != "ChallengeSent" || tpl.pjsipCall.setup[1].event != "SuccessfulAuth" {
		t.Fatal("a PJSIP call starts with its INVITE's ChallengeSent and SuccessfulAuth")
	}
}

func TestRegexExt(t *testing.T) {
	for re, want := range map[string]string{
		`/^SIP\/200-[0-9a-f]{8}$/`:         "SIP/200",
		`/^PJSIP\/8001-[0-9a-f]{8}$/`:      "PJSIP/8001",
		`/^SIP\/office\.200-[0-9a-f]{8}$/`: "SIP/office.200",
	} {
		if got, ok := regexExt(re); !ok || got != want {
			t.Errorf("regexExt(%s) = %q, %v", re, got, ok)
		}
	}
}

// fakeConn is a guard's socket whose writes take the time its clock is
// told to advance.
type fakeConn struct {
	net.Conn
	writes  [][]byte
	advance func(b []byte) time.Duration
	now     *time.Time
}

func (f *fakeConn) Write(b []byte) (int, error) {
	f.writes = append(f.writes, slices.Clone(b))
	*f.now = f.now.Add(f.advance(b))
	return len(b), nil
}

// TestWriteAccounting writes one batch with a tripping frame in the middle
// through a socket whose writes take 100 ms, and 150 ms for the one that
// starts with the tripping frame: the tripping frame starts a write of its
// own, its time is when that write began, only the write over 100 ms is
// counted as stalled, and every frame the detector uses is counted under
// its type.
func TestWriteAccounting(t *testing.T) {
	tpl, err := loadTemplates()
	if err != nil {
		t.Fatal(err)
	}
	g := newGenerator(Options{Rate: 1000, Duration: time.Minute, Extensions: 10, Attacks: 1, Seed: 1}, tpl, config.Default())
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	g.clock = func() time.Time { return now }
	b := &batch{}
	b.reset(classAll, now)
	g.legitCall(b)
	off := len(b.buf)
	var v [numPH]string
	v[pEXT], v[pIP], v[pSESS] = "200", "203.0.113.1", "0x1"
	for k := range tpl.sipAuthFail {
		b.frame(&tpl.sipAuthFail[k], &v)
	}
	a := g.attacks[0]
	b.trips = append(b.trips, tripMark{a: a, off: off})
	b.cutAt(off)
	g.legitCall(b)

	fc := &fakeConn{now: &now, advance: func(w []byte) time.Duration {
		if len(w) == off { // the frames before the tripping one
			return 100 * time.Millisecond
		}
		return 150 * time.Millisecond
	}}
	start := now
	g.write([]*conn{{c: fc}}, b)

	if len(fc.writes) != 2 || len(fc.writes[0]) != off || !bytes.Equal(bytes.Join(fc.writes, nil), b.buf) {
		t.Fatalf("%d writes of %d bytes; want 2, the first ending at the tripping frame (%d bytes)", len(fc.writes), len(bytes.Join(fc.writes, nil)), off)
	}
	if want := start.Add(100 * time.Millisecond); !a.tripAt.Equal(want) {
		t.Errorf("tripping frame stamped %v after the start, want %v (when its write began)", a.tripAt.Sub(start), want.Sub(start))
	}
	if g.writes.Load() != 2 || g.slowWrites.Load() != 1 || time.Duration(g.maxWrite.Load()) != 150*time.Millisecond {
		t.Errorf("writes %d, over 100 ms %d, longest %v; want 2, 1, 150ms", g.writes.Load(), g.slowWrites.Load(), time.Duration(g.maxWrite.Load()))
	}
	if g.sent.Load() != uint64(b.n) || g.bytes.Load() != uint64(len(b.buf)) {
		t.Errorf("sent %d frames, %d bytes; the batch has %d, %d", g.sent.Load(), g.bytes.Load(), b.n, len(b.buf))
	}
	// The counts by type, against the frames read back and decoded.
	want := map[string]uint64{}
	r := ami.NewReader(bytes.NewReader(b.buf), ami.ReaderOptions{})
	var m ami.Message
	var ev ami.Event
	for r.Next(&m) == nil {
		if ami.Decode(&m, &ev) {
			want[m.Get("Event")]++
		}
	}
	got := map[string]uint64{}
	for i, l := range eventLabels {
		if n := g.written[i].Load(); n > 0 {
			got[l] = n
		}
	}
	if len(want) == 0 || !maps.Equal(got, want) {
		t.Errorf("written by type %v, want %v", got, want)
	}
}

// TestShortRun runs the guard in a process of its own against 2,000
// events/s for 3 s with 8 attacks: every attack is caught and its reaction
// measured, nothing is lost or counted twice, no legitimate extension is
// acted on, and the report adds up.
func TestShortRun(t *testing.T) {
	var log bytes.Buffer
	rep, err := Run(context.Background(), Options{Rate: 2000, Duration: 3 * time.Second, Extensions: 200, Attacks: 8, Seed: 7, GuardLog: &log})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep.Text(&out)
	t.Log("\n" + out.String())
	if rep.GuardPID <= 0 || rep.GuardPID == os.Getpid() {
		t.Errorf("guard pid %d: not a process of its own", rep.GuardPID)
	}
	if rep.Missed != 0 || rep.Caught != 8 || len(rep.Attacks) != 8 {
		t.Errorf("caught %d, missed %d of %d", rep.Caught, rep.Missed, len(rep.Attacks))
	}
	if len(rep.LegitActedOn) != 0 {
		t.Errorf("legitimate extensions acted on: %v", rep.LegitActedOn)
	}
	// Every event the detector uses was seen, once.
	if rep.EventsWritten == 0 || rep.EventsSeen != rep.EventsWritten || rep.Missing != 0 || rep.Dropped != 0 || rep.Reconnects != 0 {
		t.Errorf("written %d, seen %d, missing %d %v, dropped %d, reconnects %d",
			rep.EventsWritten, rep.EventsSeen, rep.Missing, rep.MissingByType, rep.Dropped, rep.Reconnects)
	}
	if want := rep.RateOffered * rep.DurationSec; float64(rep.EventsSent+rep.EventsSkipped) < 0.9*want || float64(rep.EventsSent) > 1.1*want {
		t.Errorf("sent %d events in %.2f s at %.0f/s", rep.EventsSent, rep.DurationSec, rep.RateOffered)
	}
	// A write is counted as stalled exactly when it took over 100 ms.
	if rep.Writes == 0 || (rep.SlowWrites > 0) != (rep.MaxWriteMs > 100) || rep.SlowWrites > rep.Writes {
		t.Errorf("%d writes, %d over 100 ms, longest %.1f ms", rep.Writes, rep.SlowWrites, rep.MaxWriteMs)
	}
	kinds := map[string]bool{}
	for _, a := range rep.Attacks {
		kinds[a.Kind] = true
		if a.CallsThru > a.CallsSent || a.CallsSent > a.Attempts {
			t.Errorf("%s: calls through %d, calls %d, attempts %d", a.Kind, a.CallsThru, a.CallsSent, a.Attempts)
		}
		if !a.Caught {
			continue
		}
		if a.ReactionMs <= 0 || a.ReactionMs > rep.ReactionMax {
			t.Errorf("%s %s: reaction %.3f ms (max %.3f)", a.Kind, a.Address, a.ReactionMs, rep.ReactionMax)
		}
		if (a.How == "hangup") != (a.HangupMs == a.ReactionMs) || (a.Kind == AttackBruteForce) != (a.HangupMs < 0) {
			t.Errorf("%s caught by %s: reaction %.3f ms, by Hangup %.3f ms", a.Kind, a.How, a.ReactionMs, a.HangupMs)
		}
		if a.Kind == AttackBruteForce && a.CallsSent != 0 {
			t.Errorf("brute force placed %d calls", a.CallsSent)
		}
	}
	if len(kinds) != 4 {
		t.Errorf("attack kinds %v", kinds)
	}
	if rep.Reactions != rep.Caught || !(rep.ReactionP50 <= rep.ReactionP99 && rep.ReactionP99 <= rep.ReactionMax) {
		t.Errorf("%d reactions for %d caught; p50 %.3f p99 %.3f max %.3f", rep.Reactions, rep.Caught, rep.ReactionP50, rep.ReactionP99, rep.ReactionMax)
	}
	// Both sessions log in with the guard's default MD5 challenge.
	if rep.Actions["hangup"] == 0 || rep.Actions["login"] != 2 || rep.Actions["challenge"] != 2 {
		t.Errorf("actions %v", rep.Actions)
	}
	if rep.GuardCPUSec <= 0 || rep.GuardPeakRSS <= 0 || rep.GuardHeapInuse <= 0 {
		t.Errorf("guard cpu %.2f s, peak rss %.1f MiB, heap %.1f MiB", rep.GuardCPUSec, rep.GuardPeakRSS, rep.GuardHeapInuse)
	}
	if !bytes.Contains(log.Bytes(), []byte(`"message":"guard started"`)) {
		t.Error("the guard's log was not passed on")
	}
	met := map[string]bool{}
	for _, g := range rep.Goals {
		met[g.Name] = g.Met
	}
	if !met["every attack caught"] || !met["nothing dropped or lost"] || !met["no reconnect"] {
		t.Errorf("goals %+v", rep.Goals)
	}
}

// TestStressStops starts stress-ng and stops it: none of its processes is
// left behind.
func TestStressStops(t *testing.T) {
	testenv.RequireCommand(t, "stress-ng")
	sp := newSpawner()
	defer sp.close()
	cmd, err := startStress(sp, 1, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	stopGroup(cmd, 5*time.Second)
	if err := syscall.Kill(-cmd.Process.Pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("stress-ng's process group still there after the stop: %v", err)
	}
}

func TestDefaultAttacks(t *testing.T) {
	for d, want := range map[time.Duration]int{3 * time.Second: 100, time.Minute: 100, 5 * time.Minute: 100, 10 * time.Minute: 200} {
		o := Options{Duration: d}
		o.defaults()
		if o.Attacks != want {
			t.Errorf("%v: %d attacks, want %d", d, o.Attacks, want)
		}
	}
	o := Options{Attacks: -1}
	o.defaults()
	if o.Attacks != 0 {
		t.Errorf("--attacks -1 gives %d", o.Attacks)
	}
}

func TestParseProc(t *testing.T) {
	stat := "4242 (guard (x) y) S 1 4242 4242 0 -1 4194560 5000 0 0 0 1234 567 0 0 20 0 9 0 100 2000000 3000 18446744073709551615"
	if d, err := parseStatCPU(stat); err != nil || d != 18010*time.Millisecond {
		t.Errorf("cpu %v, %v; want 18.01s", d, err)
	}
	status := "Name:\tguard\nVmPeak:\t  900 kB\nVmHWM:\t  262144 kB\nVmRSS:\t 1000 kB\n"
	if n, err := parseStatusKiB(strings.NewReader(status), "VmHWM"); err != nil || n != 262144 {
		t.Errorf("VmHWM %d, %v", n, err)
	}
	if _, err := parseStatusKiB(strings.NewReader(status), "VmSwap"); err == nil {
		t.Error("a missing line gives no error")
	}
	s, err := parseScrape(strings.NewReader("# HELP x y\n# TYPE x counter\nastguard_events_total{type=\"Newchannel\"} 12\nastguard_events_dropped_total 0\ngo_memstats_heap_inuse_bytes 1.5e+07\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.get("astguard_events_total", "type", "Newchannel") != 12 || s.get("go_memstats_heap_inuse_bytes", "", "") != 1.5e7 || s.get("astguard_events_total", "type", "Hangup") != 0 {
		t.Errorf("scrape %v", s)
	}
}

// TestSpawnedOutlivesLockedThreads: a process the run starts (with a
// Pdeathsig) survives the end of OS threads that goroutines locked, as the
// generator's thread ends with it.
func TestSpawnedOutlivesLockedThreads(t *testing.T) {
	sp := newSpawner()
	defer sp.close()
	cmd := exec.Command("sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := sp.start(cmd); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
		<-exited
	}()
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread() // never unlocked: the thread ends
		}()
	}
	wg.Wait()
	// The child is alive as long as it answers signal 0 and has not exited.
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the child died with the threads: %v", err)
	}
	select {
	case err := <-exited:
		t.Fatalf("the child died with the threads: %v", err)
	default:
	}
}
