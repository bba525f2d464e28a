package guard

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/config"
)

const transcripts = "../../testdata/transcripts/"

// syncBuffer is a log sink safe for the guard's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// kernelFirewall stands in for iptables: it remembers what it blocks, as
// the dry run does, and says it is real, so the bans through it are real
// bans and block_ip's outcome is done.
type kernelFirewall struct{ *firewall.DryRun }

func (kernelFirewall) Real() bool { return true }

type harness struct {
	srv    *amitest.Server
	cfg    *config.Config
	fw     kernelFirewall
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan error
	guard  chan *Guard
}

// startGuard runs the guard in enforce mode against the fake Asterisk 20
// replaying transcript at speed.
func startGuard(t *testing.T, transcript string, speed float64, mutate func(*config.Config)) *harness {
	t.Helper()
	return startGuardWith(t, transcript, speed, mutate, nil)
}

// startGuardWith runs the guard with fw as its firewall (nil: a
// kernelFirewall the test can read).
func startGuardWith(t *testing.T, transcript string, speed float64, mutate func(*config.Config), fw firewall.Firewall) *harness {
	t.Helper()
	data, err := os.ReadFile(transcripts + transcript)
	if err != nil {
		t.Fatal(err)
	}
	return startGuardOn(t, amitest.Options{Transcript: bytes.NewReader(data), Speed: speed, AutoPlay: true}, mutate, fw, nil)
}

// startGuardOn runs the guard against a fake Asterisk started with srvOpts
// (the credentials are the guard's); more, if set, changes the guard's
// Options before it starts.
func startGuardOn(t *testing.T, srvOpts amitest.Options, mutate func(*config.Config), fw firewall.Firewall, more func(*Options)) *harness {
	t.Helper()
	srvOpts.Username, srvOpts.Secret = "guard", "guardpass"
	srv, err := amitest.Start(srvOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	dir := t.TempDir()
	cfg := config.Default()
	cfg.Mode = config.ModeEnforce
	cfg.AMI.Address = srv.Addr()
	cfg.AMI.Secret = "guardpass"
	cfg.Response.StateFile = filepath.Join(dir, "bans.json")
	cfg.Response.SecretsFile = filepath.Join(dir, "secrets.jsonl")
	cfg.Response.AdminSocket = filepath.Join(dir, "admin.sock")
	cfg.Response.Firewall = config.FirewallDryRun
	cfg.Response.RetryBackoff = config.Duration(20 * time.Millisecond)
	if mutate != nil {
		mutate(cfg)
	}
	h := &harness{srv: srv, cfg: cfg, fw: kernelFirewall{firewall.NewDryRun(zerolog.Nop())}, logs: &syncBuffer{}, done: make(chan error, 1), guard: make(chan *Guard, 1)}
	if fw == nil {
		fw = h.fw
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	opts := Options{Config: cfg, Logger: zerolog.New(h.logs), Firewall: fw,
		Started: func(g *Guard) { h.guard <- g }}
	if more != nil {
		more(&opts)
	}
	go func() { h.done <- Run(ctx, opts) }()
	t.Cleanup(func() { h.stop(t) })
	return h
}

func (h *harness) stop(t *testing.T) {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil {
			t.Errorf("guard: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("guard did not stop within 5 s")
	}
}

// waitFor polls cond (a condition on state, not a timing assertion) until it
// holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func confSection(conf, name, key string) (string, bool) {
	in := false
	for _, line := range strings.Split(conf, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "[") {
			sec := line[1:strings.IndexByte(line+"]", ']')]
			in = sec == name
			continue
		}
		if k, v, ok := strings.Cut(line, "="); in && ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

func blocked(h *harness) []netip.Addr {
	b, _ := h.fw.Blocked(context.Background())
	return b
}

// The end-to-end story of the recorded Asterisk 20 attack (attack-mixed.ami),
// over loopback.
func TestEndToEndAttackMixed(t *testing.T) {
	t.Parallel()
	h := startGuard(t, "attack-mixed.ami", 4, nil)
	ip := netip.MustParseAddr
	waitFor(t, "bans of 127.0.0.2 and 127.0.0.5", 20*time.Second, func() bool {
		b := blocked(h)
		return slices.Contains(b, ip("127.0.0.2")) && slices.Contains(b, ip("127.0.0.5"))
	})
	waitFor(t, "both secrets rotated", 20*time.Second, func() bool {
		s200, _ := confSection(h.srv.Conf("sip.conf"), "200", "secret")
		p300, _ := confSection(h.srv.Conf("pjsip.conf"), "300-auth", "password")
		return s200 != "Leaky200" && p300 != "Leaky300"
	})
	select {
	case <-h.srv.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("transcript not streamed")
	}
	// The actions still in flight end: every channel of 200 and 300 hung
	// up, both rotations in the secrets file.
	waitFor(t, "the last hang-ups and the secrets file", 10*time.Second, func() bool {
		raw, _ := os.ReadFile(h.cfg.Response.SecretsFile)
		return strings.Count(string(raw), `"status":"applied"`) >= 2 &&
			!slices.ContainsFunc(h.srv.LiveChannels(), func(ch string) bool {
				return strings.HasPrefix(ch, "SIP/200-") || strings.HasPrefix(ch, "PJSIP/300-")
			})
	})
	h.stop(t)

	// 200's and 300's channels were hung up by regex; nothing touched 201.
	var regexes []string
	for _, a := range h.srv.Actions() {
		for _, hd := range a.Headers {
			// (Login's MD5 key is random hex: "201" turns up in it by chance.)
			if strings.Contains(hd[1], "201") && a.Name != "Events" && a.Name != "Login" {
				t.Errorf("an action touched 201: %s %v", a.Name, a.Headers)
			}
			if a.Name == "Hangup" && strings.EqualFold(hd[0], "Channel") && strings.HasPrefix(hd[1], "/") {
				regexes = append(regexes, hd[1])
			}
		}
	}
	for _, want := range []string{`/^SIP\/200-[0-9a-f]{8}$/`, `/^PJSIP\/300-[0-9a-f]{8}$/`} {
		if !slices.Contains(regexes, want) {
			t.Errorf("no Hangup %s among %v", want, regexes)
		}
	}
	for _, ch := range h.srv.LiveChannels() {
		if strings.HasPrefix(ch, "SIP/200-") || strings.HasPrefix(ch, "PJSIP/300-") {
			t.Errorf("channel %s of a stopped extension is still up", ch)
		}
	}
	// The secrets landed in the right sections only.
	sip, pj := h.srv.Conf("sip.conf"), h.srv.Conf("pjsip.conf")
	if s, _ := confSection(sip, "201", "secret"); s != "Strong201secret" {
		t.Errorf("201's secret changed to %q", s)
	}
	if s, _ := confSection(pj, "301-auth", "password"); s != "Strong301secret" {
		t.Errorf("301's password changed to %q", s)
	}
	new200, _ := confSection(sip, "200", "secret")
	new300, _ := confSection(pj, "300-auth", "password")
	if len(new200) < 20 || len(new300) < 20 {
		t.Errorf("new secrets too short: %d and %d characters", len(new200), len(new300))
	}
	// The legitimate user's address is not blocked.
	if slices.Contains(blocked(h), ip("127.0.0.3")) {
		t.Error("127.0.0.3 (201, legitimate) was blocked")
	}
	// The secrets file has both, mode 0600; no log line carries a secret.
	fi, err := os.Stat(h.cfg.Response.SecretsFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("secrets file mode %v, want 0600", fi.Mode().Perm())
	}
	raw, _ := os.ReadFile(h.cfg.Response.SecretsFile)
	var applied []string
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var sl secretLine
		if err := json.Unmarshal([]byte(l), &sl); err != nil {
			t.Fatalf("secrets file line %q: %v", l, err)
		}
		if sl.Status == "applied" {
			applied = append(applied, sl.Extension+"="+sl.Secret)
		}
	}
	for _, want := range []string{"SIP/200=" + new200, "PJSIP/300=" + new300} {
		if !slices.Contains(applied, want) {
			t.Errorf("secrets file lacks %s (has %d applied lines)", strings.SplitN(want, "=", 2)[0], len(applied))
		}
	}
	logs := h.logs.String()
	for _, secret := range []string{new200, new300, "guardpass"} {
		if strings.Contains(logs, secret) {
			t.Errorf("a secret appears in the log")
		}
	}
	for _, want := range []string{`"action":"hangup","result":"done"`, `"action":"block_ip","result":"done"`, `"action":"rotate_secret","result":"done"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("no %s outcome line in the log", want)
		}
	}
}
