package crowdsec

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/crowdsec/cstest"
	"github.com/astguard/astguard/internal/testenv"
)

// The package's tests share one real Local API (cstest.Shared), stopped
// after the run. Each test selects the decisions it pulls by a scenario or
// address of its own, so that they run side by side.
func TestMain(m *testing.M) {
	code := m.Run()
	if err := cstest.StopShared(); err != nil {
		code = 1
	}
	os.Exit(code)
}

// realDryRun stands in for the kernel: it remembers what it blocks, as the
// dry run does, and says it is real, so that the bans through it are real.
type realDryRun struct{ *firewall.DryRun }

func (realDryRun) Real() bool { return true }

// newBans starts a ban manager over a realDryRun firewall (or a dry-run
// one when dryRun) with never as its protected networks.
func newBans(t *testing.T, dryRun bool, never ...netip.Prefix) *bans.Manager {
	t.Helper()
	var fw firewall.Firewall = realDryRun{firewall.NewDryRun(zerolog.Nop())}
	if dryRun {
		fw = firewall.NewDryRun(zerolog.Nop())
	}
	m, err := bans.New(bans.Options{Firewall: fw, StatePath: filepath.Join(t.TempDir(), "bans.json"), Never: never, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = m.Close(ctx)
	})
	return m
}

// logSink is a log a test reads, safe for the Service's goroutines.
type logSink struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logSink) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// lines returns the JSON log lines whose message is msg.
func (l *logSink) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// svc is a running Service with what the test reads of it.
type svc struct {
	*Service
	logs *logSink
	bans *bans.Manager
	done chan struct{}
}

// startService runs a Service with opts, filling in the test's defaults:
// enforce mode, a logger, quick retries. opts.Bans may be nil (a
// push-only service gets a ban manager of its own).
func startService(t *testing.T, opts Options) *svc {
	t.Helper()
	s := &svc{logs: &logSink{}, done: make(chan struct{})}
	if opts.Enforcing == nil {
		opts.Enforcing = func() bool { return true }
	}
	if opts.Bans == nil {
		opts.Bans = newBans(t, false)
	}
	if m, ok := opts.Bans.(*bans.Manager); ok {
		s.bans = m
	}
	if opts.PullInterval == 0 {
		opts.PullInterval = 200 * time.Millisecond
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 200 * time.Millisecond
	}
	if opts.WidestIPv4 == 0 && opts.WidestIPv6 == 0 {
		opts.WidestIPv4, opts.WidestIPv6 = 24, 48
	}
	opts.Logger = zerolog.New(s.logs)
	var err error
	if s.Service, err = New(opts); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_ = s.Run(ctx)
		close(s.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			t.Error("the CrowdSec service did not stop within 5s")
		}
		if t.Failed() {
			t.Logf("CrowdSec service log:\n%s", s.logs.String())
		}
		for _, secret := range []string{opts.Password, opts.APIKey} {
			if secret != "" && strings.Contains(s.logs.String(), secret) {
				t.Error("a CrowdSec credential appears in the log")
			}
		}
	})
	return s
}

// banOf returns the ban of p in m.
func banOf(m *bans.Manager, p netip.Prefix) (bans.Ban, bool) {
	for _, b := range m.List() {
		if b.Prefix == p {
			return b, true
		}
	}
	return bans.Ban{}, false
}

// tracked returns what s holds for p.
func tracked(s *Service, p netip.Prefix) (Tracked, bool) {
	for _, d := range s.Decisions() {
		if d.Prefix == p {
			return d, true
		}
	}
	return Tracked{}, false
}

// lapiDecision returns the LAPI's decision for value, if any.
func lapiDecision(t *testing.T, l *cstest.LAPI, value string) (cstest.Decision, bool) {
	t.Helper()
	ds, err := l.Decisions()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if d.Value == value {
			return d, true
		}
	}
	return cstest.Decision{}, false
}

// randomAddr returns an address of 203.0.113.0/24 with a random last byte
// and third byte spread by the test's own prefix: each test bans its own.
func randomAddr(t *testing.T, base string) netip.Addr {
	t.Helper()
	p := netip.MustParsePrefix(base)
	b := p.Addr().As4()
	var r [1]byte
	_, _ = rand.Read(r[:])
	b[3] = 1 + r[0]%250
	return netip.AddrFrom4(b)
}

// addMachine and addBouncer register a machine or a bouncer, failing t.
func addMachine(t *testing.T, l *cstest.LAPI) (string, string) {
	t.Helper()
	name := cstest.Name("machine")
	pw, err := l.AddMachine(name)
	if err != nil {
		t.Fatal(err)
	}
	return name, pw
}

func addBouncer(t *testing.T, l *cstest.LAPI) string {
	t.Helper()
	key, err := l.AddBouncer(cstest.Name("bouncer"))
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func cscli(t *testing.T, l *cstest.LAPI, args ...string) {
	t.Helper()
	if _, err := l.Cscli(args...); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, what, 30*time.Second, cond)
}

func single(s string) netip.Prefix {
	a := netip.MustParseAddr(s)
	return netip.PrefixFrom(a, a.BitLen())
}
