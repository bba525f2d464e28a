package guard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/action/secret"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/incident"
	"github.com/astguard/astguard/internal/policy"
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
	srv      *amitest.Server
	cfg      *config.Config
	fw       kernelFirewall
	logs     *syncBuffer
	outcomes *outcomeLog
	cancel   context.CancelFunc
	done     chan error
	guard    chan *Guard
}

// outcomeLog keeps the outcomes the guard reports (Options.Outcomes), in
// the order it reported them.
type outcomeLog struct {
	mu  sync.Mutex
	all []Outcome
}

func (l *outcomeLog) add(o Outcome) {
	l.mu.Lock()
	l.all = append(l.all, o)
	l.mu.Unlock()
}

// list returns the outcomes so far for which keep holds (nil: all).
func (l *outcomeLog) list(keep func(*Outcome) bool) []Outcome {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Outcome
	for i := range l.all {
		if keep == nil || keep(&l.all[i]) {
			out = append(out, l.all[i])
		}
	}
	return out
}

// has reports whether an outcome of action act with result res about key
// was reported.
func (l *outcomeLog) has(act policy.Action, res policy.Result, key policy.Key) bool {
	return len(l.list(func(o *Outcome) bool { return o.Action == act && o.Result == res && o.Key == key })) > 0
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
	// The fake Asterisk's files hold the secrets, even on a FreePBX box.
	cfg.Secrets.FreePBX.Conf = filepath.Join(dir, "no-freepbx.conf")
	if mutate != nil {
		mutate(cfg)
	}
	return runGuard(t, srv, cfg, fw, more)
}

// runGuard runs the guard with cfg against srv, with fw as its firewall
// (nil: a kernelFirewall the test can read); more, if set, changes its
// Options before it starts. A second guard on the same srv and cfg is the
// first one restarted.
func runGuard(t *testing.T, srv *amitest.Server, cfg *config.Config, fw firewall.Firewall, more func(*Options)) *harness {
	t.Helper()
	h := &harness{srv: srv, cfg: cfg, fw: kernelFirewall{firewall.NewDryRun(zerolog.Nop())}, logs: &syncBuffer{}, outcomes: &outcomeLog{},
		done: make(chan error, 1), guard: make(chan *Guard, 1)}
	if fw == nil {
		fw = h.fw
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	opts := Options{Config: cfg, Logger: zerolog.New(h.logs), Firewall: fw,
		Started: func(g *Guard) { h.guard <- g }, Outcomes: h.outcomes.add}
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
	return addrsOf(b)
}

// addrsOf returns the addresses of entries (a network's address for a
// network).
func addrsOf(entries []firewall.Entry) []netip.Addr {
	out := make([]netip.Addr, len(entries))
	for i, e := range entries {
		out[i] = e.Prefix.Addr()
	}
	return out
}

// countingFirewall is a kernelFirewall that counts the blocks of each
// address.
type countingFirewall struct {
	kernelFirewall
	mu     sync.Mutex
	blocks map[netip.Addr]int
}

func newCountingFirewall() *countingFirewall {
	return &countingFirewall{kernelFirewall: kernelFirewall{firewall.NewDryRun(zerolog.Nop())}, blocks: make(map[netip.Addr]int)}
}

func (f *countingFirewall) Block(ctx context.Context, entries ...firewall.Entry) error {
	f.mu.Lock()
	for _, e := range entries {
		f.blocks[e.Prefix.Addr()]++
	}
	f.mu.Unlock()
	return f.kernelFirewall.Block(ctx, entries...)
}

func (f *countingFirewall) counts() map[netip.Addr]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.blocks)
}

var (
	sip200Key   = policy.ExtensionKey(ami.TechSIP, "200")
	pjsip300Key = policy.ExtensionKey(ami.TechPJSIP, "300")
	addr4Key    = policy.AddressKey(netip.MustParseAddr("127.0.0.4"))
)

// callCount numbers the calls newCall injects, so that each has a channel
// and ids of its own.
var callCount atomic.Int32

// newCall injects the first channel of a new call of ext (its Uniqueid is
// its Linkedid) and returns the channel's name.
func newCall(h *harness, ext policy.Key) string {
	n := callCount.Add(1)
	ch := fmt.Sprintf("%s-%08x", ext, 0xfe000000+int64(n))
	h.srv.Inject(newchannelFrame(ch, fmt.Sprintf("1764075000.%d", 9000+n), "0011442079460000", ext.Name))
	return ch
}

// stoppedHangup waits for the outcome of the hang-up of channel, a new
// call of a stopped extension, and returns it.
func stoppedHangup(t *testing.T, h *harness, channel string) Outcome {
	t.Helper()
	var got []Outcome
	waitFor(t, "the hang-up of "+channel, 10*time.Second, func() bool {
		got = h.outcomes.list(func(o *Outcome) bool { return o.Action == policy.Hangup && o.Target == channel })
		return len(got) > 0
	})
	if len(got) != 1 {
		t.Errorf("%d outcomes for %s, want one: %+v", len(got), channel, got)
	}
	return got[0]
}

// updateConfigs counts the UpdateConfig actions the server received by
// the section they change.
func updateConfigs(srv *amitest.Server) map[string]int {
	n := map[string]int{}
	for _, a := range srv.Actions() {
		if a.Name == "UpdateConfig" {
			cat, _ := actionHeader(a, "Cat-000000")
			n[cat]++
		}
	}
	return n
}

// incidentsByKey returns the open incidents of a listing by key.
func incidentsByKey(l incident.Listing) map[policy.Key]incident.Record {
	m := map[policy.Key]incident.Record{}
	for _, r := range l.Open {
		m[r.Key] = r
	}
	return m
}

// The end-to-end story of the recorded attack, over loopback, in enforce
// mode: each stolen extension is hung up, blocked and given a new secret
// once, each attacking address blocked once, however many critical alerts
// the attack raises; every outcome names its incident; the legitimate 201
// is untouched. A new call of a stopped extension is hung up naming its
// incident, until guard release lets the extension call again.
func TestEndToEndAttackMixed(t *testing.T) {
	t.Parallel()
	fw := newCountingFirewall()
	h := startGuardWith(t, "attack-mixed.ami", 4, nil, fw)
	g := <-h.guard
	ip := netip.MustParseAddr
	select {
	case <-h.srv.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("transcript not streamed")
	}
	waitFor(t, "both secrets rotated", 20*time.Second, func() bool {
		return h.outcomes.has(policy.RotateSecret, policy.Done, sip200Key) && h.outcomes.has(policy.RotateSecret, policy.Done, pjsip300Key)
	})
	// A new call of SIP/200, injected after the whole transcript: once its
	// hang-up is reported, the guard has decided every event before it.
	stop := stoppedHangup(t, h, newCall(h, sip200Key))
	admin := NewAdminClient(h.cfg.Response.AdminSocket)
	list, err := admin.Incidents(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	open := incidentsByKey(list)
	inc200, inc300, inc4 := open[sip200Key], open[pjsip300Key], open[addr4Key]
	if inc200.ID == "" || inc300.ID == "" || inc4.ID == "" || len(list.Recent) != 0 {
		t.Fatalf("guard incidents: want the incidents of SIP/200, PJSIP/300 and 127.0.0.4 open: %+v", list)
	}
	if stop.Result != policy.Done || stop.Incident != inc200.ID || stop.Rule != detector.RuleCallRate || stop.Rule != inc200.Rule {
		t.Errorf("hang-up of the new call: %+v; want done, naming incident %s and its rule %s", stop, inc200.ID, inc200.Rule)
	}
	for _, r := range []incident.Record{inc200, inc300, inc4} {
		if want := r.Key.IsExtension(); r.Stopped != want || want && len(r.Actions) != 3 || !want && len(r.Actions) != 1 {
			t.Errorf("incident of %s: stopped %v, %d actions", r.Key, r.Stopped, len(r.Actions))
		}
		for _, a := range r.Actions {
			if a.Result != policy.Done || a.Attempts != 1 {
				t.Errorf("incident %s of %s: %s %s after %d attempts; want done once", r.ID, r.Key, a.Action, a.Result, a.Attempts)
			}
		}
	}
	// Once SIP/200's secret is changed, its thief's calls fail to
	// authenticate from 127.0.0.2: that address's own incident, if its
	// failures go critical, does not block it again.
	addr2Key := policy.AddressKey(ip("127.0.0.2"))
	inc2, has2 := open[addr2Key]
	if has2 && (len(inc2.Actions) != 1 || inc2.Actions[0].Result != policy.Skipped || inc2.Actions[0].BlockedBy != inc200.ID) {
		t.Errorf("incident of 127.0.0.2: %+v; want its block skipped, blocked by %s", inc2.Actions, inc200.ID)
	}
	wantOpen := 3
	if has2 {
		wantOpen = 4
	}
	if len(list.Open) != wantOpen {
		t.Errorf("%d open incidents, want those of SIP/200, PJSIP/300, 127.0.0.4 (and 127.0.0.2)", len(list.Open))
	}

	// guard release lets SIP/200 call again; PJSIP/300 stays stopped.
	rel, err := admin.Release(t.Context(), sip200Key)
	if err != nil || rel.Incident.ID != inc200.ID || rel.Incident.CloseReason != incident.ClosedReleased || rel.Warning != "" {
		t.Fatalf("guard release SIP/200: %+v, %v", rel, err)
	}
	if _, err := admin.Release(t.Context(), sip200Key); !errors.Is(err, incident.ErrNotOpen) {
		t.Errorf("a second release: %v, want incident.ErrNotOpen", err)
	}
	free := newCall(h, sip200Key)
	stop300 := stoppedHangup(t, h, newCall(h, pjsip300Key))
	if stop300.Incident != inc300.ID || stop300.Rule != inc300.Rule {
		t.Errorf("hang-up of PJSIP/300's new call: %+v, want incident %s", stop300, inc300.ID)
	}
	g.resp.wait() // the call of SIP/200 came before PJSIP/300's: what it started is over
	if o := h.outcomes.list(func(o *Outcome) bool { return o.Target == free }); len(o) != 0 {
		t.Errorf("a call of SIP/200 after its release: %+v", o)
	}
	if list, err = admin.Incidents(t.Context()); err != nil || len(list.Recent) != 1 || list.Recent[0].ID != inc200.ID || incidentsByKey(list)[sip200Key].ID != "" {
		t.Errorf("guard incidents after the release: %+v, %v", list, err)
	}
	h.stop(t)

	// One response per incident.
	if n := updateConfigs(h.srv); len(n) != 2 || n["200"] != 1 || n["300-auth"] != 1 {
		t.Errorf("UpdateConfig by section: %v; want one for 200 and one for 300-auth", n)
	}
	want := map[netip.Addr]int{ip("127.0.0.2"): 1, ip("127.0.0.5"): 1, ip("127.0.0.4"): 1}
	if got := fw.counts(); !maps.Equal(got, want) {
		t.Errorf("blocks by address: %v, want %v", got, want)
	}
	owner := map[string]string{"127.0.0.2": inc200.ID, "127.0.0.5": inc300.ID, "127.0.0.4": inc4.ID}
	for _, b := range g.Bans().List() {
		if b.Incident != owner[b.Target()] {
			t.Errorf("ban of %s names incident %q, want %q", b.Target(), b.Incident, owner[b.Target()])
		}
	}
	ids := map[policy.Key]string{sip200Key: inc200.ID, pjsip300Key: inc300.ID, addr4Key: inc4.ID, addr2Key: inc2.ID}
	count := map[policy.Key]map[policy.Action]int{}
	for _, o := range h.outcomes.list(nil) {
		if o.Incident == "" || o.Incident != ids[o.Key] || o.Rule == 0 {
			t.Errorf("outcome %+v: want the incident of %s and the rule that opened it", o, o.Key)
		}
		if o.AlertRule == 0 {
			continue // a new call of a stopped extension
		}
		if count[o.Key] == nil {
			count[o.Key] = map[policy.Action]int{}
		}
		count[o.Key][o.Action]++
		if want := policy.Done; o.Key == addr2Key && o.Result != policy.Skipped || o.Key != addr2Key && o.Result != want {
			t.Errorf("outcome %+v", o)
		}
	}
	wantCount := map[policy.Key]map[policy.Action]int{
		sip200Key:   {policy.Hangup: 1, policy.BlockIP: 1, policy.RotateSecret: 1},
		pjsip300Key: {policy.Hangup: 1, policy.BlockIP: 1, policy.RotateSecret: 1},
		addr4Key:    {policy.BlockIP: 1},
	}
	if has2 {
		wantCount[addr2Key] = map[policy.Action]int{policy.BlockIP: 1}
	}
	if fmt.Sprint(count) != fmt.Sprint(wantCount) {
		t.Errorf("outcomes by incident: %v, want %v", count, wantCount)
	}

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
		if (strings.HasPrefix(ch, "SIP/200-") || strings.HasPrefix(ch, "PJSIP/300-")) && ch != free {
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
		var sl secret.FileLine
		if err := json.Unmarshal([]byte(l), &sl); err != nil {
			t.Fatalf("secrets file line %q: %v", l, err)
		}
		if sl.Status == secret.Applied {
			applied = append(applied, sl.Extension+"="+sl.Secret)
		}
	}
	if want := []string{"SIP/200=" + new200, "PJSIP/300=" + new300}; !slices.Equal(applied, want) {
		t.Errorf("secrets file: %d applied lines, want one for SIP/200 then one for PJSIP/300", len(applied))
	}
	logs := h.logs.String()
	for _, secret := range []string{new200, new300, "guardpass"} {
		if strings.Contains(logs, secret) {
			t.Errorf("a secret appears in the log")
		}
	}
}
