package guard

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/action/secret"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/incident"
	"github.com/astguard/astguard/internal/policy"
)

// reloadHarness runs a guard whose configuration file a test rewrites and
// reloads.
type reloadHarness struct {
	srv      *amitest.Server
	g        *Guard
	cfg      *config.Config // the start configuration
	file     string
	next     atomic.Pointer[config.Config]
	reload   chan struct{}
	results  chan ReloadResult
	logs     *syncBuffer
	outcomes *outcomeLog
}

// startReloadable runs the guard against srv with the test defaults,
// changed by mutate, and lookup resolving ami.address (nil: the system's).
func startReloadable(t *testing.T, srv *amitest.Server, mutate func(*config.Config), lookup lookupFunc) *reloadHarness {
	t.Helper()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.AMI.Address, cfg.AMI.Secret = srv.Addr(), amitest.DefaultSecret
	cfg.AMI.ReconnectInterval = config.Duration(10 * time.Minute) // see startGuardWith
	cfg.Response.StateFile = filepath.Join(dir, "bans.json")
	cfg.Response.SecretsFile = filepath.Join(dir, "secrets.jsonl")
	cfg.Response.AdminSocket = filepath.Join(dir, "admin.sock")
	cfg.Response.Firewall = config.FirewallDryRun
	cfg.Response.RetryBackoff = config.Duration(20 * time.Millisecond)
	if mutate != nil {
		mutate(cfg)
	}
	h := &reloadHarness{srv: srv, cfg: cfg, file: filepath.Join(dir, "config.toml"), reload: make(chan struct{}),
		results: make(chan ReloadResult, 1), logs: &syncBuffer{}, outcomes: &outcomeLog{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	started := make(chan *Guard, 1)
	go func() {
		done <- Run(ctx, Options{Config: cfg, ConfigFile: h.file, Reload: h.reload, Logger: zerolog.New(h.logs),
			Firewall: firewall.NewDryRun(zerolog.Nop()), LookupNetIP: lookup,
			Load:     func() (*config.Config, error) { c := *h.next.Load(); return &c, nil },
			Started:  func(g *Guard) { started <- g },
			Reloaded: func(r ReloadResult) { h.results <- r }, Outcomes: h.outcomes.add})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("guard: %v", err)
		}
	})
	select {
	case h.g = <-started:
	case err := <-done:
		t.Fatalf("guard did not start: %v", err)
	}
	return h
}

// reloadWith reloads the configuration last read (at first, the start
// one) changed by mutate.
func (h *reloadHarness) reloadWith(t *testing.T, mutate func(*config.Config)) ReloadResult {
	t.Helper()
	c := *h.cfg
	if last := h.next.Load(); last != nil {
		c = *last
	}
	mutate(&c)
	h.next.Store(&c)
	h.reload <- struct{}{}
	select {
	case r := <-h.results:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no reload outcome")
	}
	return ReloadResult{}
}

// reloadLogLine is a log line of the guard, decoded.
type reloadLogLine map[string]any

func (l reloadLogLine) str(k string) string { s, _ := l[k].(string); return s }

// lines returns the log lines with the message msg.
func (h *reloadHarness) lines(t *testing.T, msg string) []reloadLogLine {
	t.Helper()
	var out []reloadLogLine
	sc := bufio.NewScanner(strings.NewReader(h.logs.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l reloadLogLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("log line is not JSON: %q", sc.Text())
		}
		if l.str("message") == msg {
			out = append(out, l)
		}
	}
	return out
}

// Every key is either applied by a reload or said to need a restart.
func TestEveryKeyIsLiveOrRestart(t *testing.T) {
	t.Parallel()
	for _, k := range config.Keys() {
		if live, restart := under(k, liveKeys), under(k, restartKeys); live == restart {
			t.Errorf("%s: applied by a reload %v, needs a restart %v", k, live, restart)
		}
	}
}

// guessing injects five failed logins from ip: a critical auth_failures
// alert, whose policy blocks the address.
func guessing(srv *amitest.Server, ip string) {
	for range 5 {
		srv.Inject(securityFrame("InvalidPassword", "SIP", "200", "IPV4/UDP/"+ip+"/5060"))
	}
}

// A reload changing log.level changes at once what every part of the guard
// logs.
func TestReloadAppliesLogLevel(t *testing.T) {
	t.Parallel()
	srv, err := amitest.Start(amitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	h := startReloadable(t, srv, func(c *config.Config) { c.Log.Level = "warn" }, nil)
	if n := len(h.lines(t, "guard started")); n != 0 {
		t.Errorf("an info line at level warn")
	}
	waitFor(t, "the login", 5*time.Second, func() bool { return h.g.events.Connected() })

	// At warn: the alert (error) is logged, the observe-mode outcome (info) is not.
	guessing(srv, "192.0.2.50")
	waitFor(t, "the critical alert of 192.0.2.50", 5*time.Second, func() bool {
		return slices.ContainsFunc(h.lines(t, "fraud alert"), func(l reloadLogLine) bool {
			return l.str("ip") == "192.0.2.50" && l.str("severity") == "critical"
		})
	})
	h.reloadWith(t, func(c *config.Config) { c.Log.Level = "warn"; c.Detection.Cooldown = config.Duration(time.Minute) })
	if n := len(h.lines(t, "configuration reloaded")); n != 0 {
		t.Errorf("%d info lines at level warn", n)
	}

	// At info: the reload's own line, and the responder's outcome.
	r := h.reloadWith(t, func(c *config.Config) { c.Log.Level = "info" })
	if !slices.Equal(r.Applied, []string{"log.level"}) || len(r.Restart) != 0 || r.Err != nil || r.File != h.file {
		t.Errorf("reload: %+v", r)
	}
	if l := h.lines(t, "configuration reloaded"); len(l) != 1 || l[0].str("config") != h.file {
		t.Errorf("reload lines at info: %v", l)
	}
	guessing(srv, "192.0.2.51")
	waitFor(t, "the outcome for 192.0.2.51", 5*time.Second, func() bool {
		return slices.ContainsFunc(h.lines(t, "action outcome"), func(l reloadLogLine) bool { return l.str("ip") == "192.0.2.51" })
	})
	for _, l := range h.lines(t, "action outcome") {
		if l.str("ip") != "192.0.2.51" || l.str("result") != "would" {
			t.Errorf("outcome logged at level warn, or not in observe mode: %v", l)
		}
	}

	// Back to error: even the reload's line is gone.
	h.reloadWith(t, func(c *config.Config) { c.Log.Level = "error" })
	if n := len(h.lines(t, "configuration reloaded")); n != 1 {
		t.Errorf("%d reload lines, want the one at info", n)
	}
}

// A reload of secrets_file sends the next secret to the new file, and the
// outcome names the file the secret went to.
func TestReloadAppliesSecretsFile(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(transcripts + "attack-mixed.ami")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := amitest.Start(amitest.Options{Transcript: bytes.NewReader(data), Speed: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	h := startReloadable(t, srv, func(c *config.Config) { c.Mode = config.ModeEnforce }, nil)
	moved := filepath.Join(t.TempDir(), "new", "secrets.jsonl")
	r := h.reloadWith(t, func(c *config.Config) { c.Response.SecretsFile = moved })
	if !slices.Equal(r.Applied, []string{"response.secrets_file"}) || len(r.Restart) != 0 {
		t.Fatalf("reload: %+v", r)
	}
	srv.Play()
	var done reloadLogLine
	waitFor(t, "the rotation of SIP/200", 30*time.Second, func() bool {
		for _, l := range h.lines(t, "action outcome") {
			if l.str("action") == "rotate_secret" && l.str("extension") == "200" && l.str("result") == "done" {
				done = l
				return true
			}
		}
		return false
	})
	if !strings.Contains(done.str("detail"), "the new secret is in "+moved+":") {
		t.Errorf("outcome detail %q does not name %s", done.str("detail"), moved)
	}
	raw, err := os.ReadFile(moved)
	if err != nil {
		t.Fatal(err)
	}
	var statuses []secret.Status
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		var l secret.FileLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		if l.Extension == "SIP/200" && l.Secret != "" {
			statuses = append(statuses, l.Status)
		}
	}
	if !slices.Equal(statuses, []secret.Status{secret.Pending, secret.Applied}) {
		t.Errorf("SIP/200 in %s: %v, want pending then applied", moved, statuses)
	}
	if _, err := os.Stat(h.cfg.Response.SecretsFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the old secrets file %s: %v, want none", h.cfg.Response.SecretsFile, err)
	}
}

// Keys that need a restart keep their running value, each with a warning
// naming it and the file; the others are applied.
func TestReloadWarnsPerRestartKey(t *testing.T) {
	t.Parallel()
	srv, err := amitest.Start(amitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	h := startReloadable(t, srv, nil, nil)
	r := h.reloadWith(t, func(c *config.Config) {
		c.AMI.ActionTimeout = config.Duration(time.Minute)
		c.AMI.Secret = "another"
		c.Metrics.Listen = "127.0.0.1:9"
		c.Detection.Cooldown = config.Duration(time.Minute)
		c.Response.Chain = "OTHER"
		c.Response.StateFile = "/tmp/elsewhere.json"
		c.Response.HangupCause = 16
		c.Secrets.Realtime.AuthCache = "auths"
		c.Policy.NewSource.Warning = []string{}
	})
	wantRestart := []string{"ami.secret", "ami.action_timeout", "metrics.listen", "response.chain", "response.state_file", "secrets.realtime.auth_cache"}
	wantApplied := []string{"detector.cooldown", "response.hangup_cause", "policy.new_source.warning"}
	if !slices.Equal(r.Restart, wantRestart) || !slices.Equal(r.Applied, wantApplied) || r.Err != nil {
		t.Errorf("reload: restart %v applied %v err %v\nwant restart %v applied %v", r.Restart, r.Applied, r.Err, wantRestart, wantApplied)
	}
	var warned []string
	for _, l := range h.lines(t, "configuration key changed, but it takes effect at the next start: the running value is kept") {
		if l.str("config") != h.file || l.str("level") != "warn" {
			t.Errorf("warning %v", l)
		}
		warned = append(warned, l.str("key"))
	}
	if !slices.Equal(warned, wantRestart) {
		t.Errorf("warnings for %v, want %v", warned, wantRestart)
	}
	if strings.Contains(h.logs.String(), "another") {
		t.Error("the new AMI secret was logged")
	}
	// What runs is what is reported.
	c := h.g.cfg.Load()
	if c.AMI != h.cfg.AMI || c.Metrics.Listen != "" || c.Response.Chain != "ASTGUARD" || c.Response.StateFile != h.cfg.Response.StateFile {
		t.Errorf("a restart key took the new value: %+v %+v", c.AMI, c.Response)
	}
	if c.Detection.Cooldown != config.Duration(time.Minute) || c.Response.HangupCause != 16 {
		t.Errorf("an applied key kept its old value")
	}
}

// A refused file changes nothing, and the outcome says why.
func TestReloadRefusedNamesTheFile(t *testing.T) {
	t.Parallel()
	srv, err := amitest.Start(amitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	dir := t.TempDir()
	file := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(file, []byte("[allow]\nnetworks = [\"0.0.0.0/0\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.AMI.Address, cfg.AMI.Secret = srv.Addr(), amitest.DefaultSecret
	cfg.AMI.ReconnectInterval = config.Duration(10 * time.Minute)
	cfg.Response.StateFile = filepath.Join(dir, "bans.json")
	cfg.Response.SecretsFile = filepath.Join(dir, "secrets.jsonl")
	cfg.Response.AdminSocket = filepath.Join(dir, "admin.sock")
	logs := &syncBuffer{}
	reload, results := make(chan struct{}), make(chan ReloadResult, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{Config: cfg, ConfigFile: file, Reload: reload, Logger: zerolog.New(logs),
			Firewall: firewall.NewDryRun(zerolog.Nop()),
			Load:     func() (*config.Config, error) { return config.Load(file) },
			Reloaded: func(r ReloadResult) { results <- r }})
	}()
	reload <- struct{}{}
	r := <-results
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := file + `:2: allow.networks[0]: "0.0.0.0/0" is wider than /8 (allow.widest_ipv4), so no address in it would ever be counted or blocked; if you mean it, add "0.0.0.0/0" to confirm_wide in [allow]`
	if r.Err == nil || r.Err.Error() != want || r.File != file || r.Applied != nil || r.Restart != nil {
		t.Errorf("reload: %+v\nwant error %s", r, want)
	}
	if !strings.Contains(logs.String(), `"config":"`+file+`"`) {
		t.Errorf("the refusal does not name the file: %s", logs.String())
	}
}

// lookupSwitch resolves every name to 127.0.0.1 while ok is set, and fails
// while it is not; it counts its calls.
type lookupSwitch struct {
	ok    atomic.Bool
	calls atomic.Int32
}

func (l *lookupSwitch) lookup(_ context.Context, _, host string) ([]netip.Addr, error) {
	l.calls.Add(1)
	if !l.ok.Load() {
		return nil, errors.New("lookup " + host + ": server misbehaving")
	}
	return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
}

// An AMI host name that does not resolve at start does not stop the guard:
// it says so loudly, starts with the configured networks, and protects the
// AMI server once a reload resolves it, lifting a ban made meanwhile.
func TestAMINameResolvedAtReload(t *testing.T) {
	t.Parallel()
	srv, err := amitest.Start(amitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var ls lookupSwitch
	h := startReloadable(t, srv, func(c *config.Config) {
		c.AMI.Address = "localhost:1" // nothing listens: no AMI connect to resolve it
		c.Allow.Networks = []string{"192.0.2.0/24"}
		c.Mode = config.ModeEnforce // observe mode records no ban
	}, ls.lookup)
	errs := h.lines(t, "the AMI server's address does not resolve: it is not protected from a ban until it does (tried again at every reload and AMI connect)")
	if len(errs) != 1 || errs[0].str("level") != "error" || errs[0].str("key") != "ami.address" || errs[0].str("config") != h.file ||
		errs[0].str("error") != "ami.address: cannot resolve localhost: lookup localhost: server misbehaving" {
		t.Errorf("start: %v", errs)
	}
	if p := h.g.protected(); !covers(p, "192.0.2.1") || covers(p, "127.0.0.1") {
		t.Errorf("protected at start: %v", p)
	}
	ctx := context.Background()
	if _, err := h.g.bans.Ban(ctx, bans.Request{Addr: netip.MustParseAddr("127.0.0.1"), TTL: time.Hour, Reason: "test"}); err != nil {
		t.Fatal(err)
	}

	ls.ok.Store(true)
	h.reloadWith(t, func(c *config.Config) {})
	if p := h.g.protected(); !covers(p, "127.0.0.1") || !covers(p, "192.0.2.1") {
		t.Errorf("protected after the reload: %v", p)
	}
	if b := h.g.bans.List(); len(b) != 0 {
		t.Errorf("bans after the AMI server is protected: %v", b)
	}
	if l := h.lines(t, "the AMI server's address resolves now: it is protected from a ban"); len(l) != 1 || l[0].str("when") != "reload" {
		t.Errorf("resolved: %v", l)
	}
	// A later failure keeps what it resolved to.
	ls.ok.Store(false)
	h.reloadWith(t, func(c *config.Config) {})
	if p := h.g.protected(); !covers(p, "127.0.0.1") {
		t.Errorf("protected after a failed resolution: %v", p)
	}
}

// The name is also tried again when the AMI session connects.
func TestAMINameResolvedAtConnect(t *testing.T) {
	t.Parallel()
	srv, err := amitest.Start(amitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	_, port, _ := strings.Cut(srv.Addr(), ":")
	var ls lookupSwitch
	h := startReloadable(t, srv, func(c *config.Config) { c.AMI.Address = "localhost:" + port }, func(ctx context.Context, n, host string) ([]netip.Addr, error) {
		if ls.calls.Load() > 0 {
			ls.ok.Store(true) // down at start only
		}
		return ls.lookup(ctx, n, host)
	})
	waitFor(t, "the AMI server protected", 10*time.Second, func() bool { return covers(h.g.protected(), "127.0.0.1") })
	if l := h.lines(t, "the AMI server's address resolves now: it is protected from a ban"); len(l) != 1 || l[0].str("when") != "connect" {
		t.Errorf("resolved: %v", l)
	}
}

// A reload rebuilds the policy table, sets the incidents' quiet time, and
// switches the incident book with the bans manager: from observe to
// enforce, the incidents observe mode kept in memory are written to the
// state file.
func TestReloadCarriesTheIncidents(t *testing.T) {
	srv, err := amitest.Start(amitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	h := startReloadable(t, srv, func(c *config.Config) { c.Policy.AuthFailures.Critical = []string{"alert"} }, nil)
	waitFor(t, "the login", 5*time.Second, func() bool { return h.g.events.Connected() })

	r := h.reloadWith(t, func(c *config.Config) {
		c.Policy.AuthFailures.Critical = []string{"alert", "block_ip"}
		c.Response.IncidentQuiet = config.Duration(20 * time.Minute)
	})
	if want := []string{"response.incident_quiet", "policy.auth_failures.critical"}; !slices.Equal(r.Applied, want) {
		t.Fatalf("reload applied %v, want %v", r.Applied, want)
	}
	guesser := netip.MustParseAddr("192.0.2.60")
	guessing(srv, guesser.String())
	waitFor(t, "the would-block the new policy decides", 5*time.Second, func() bool {
		return h.outcomes.has(policy.BlockIP, policy.Would, policy.AddressKey(guesser))
	})
	rec := incidentsByKey(h.g.book.List(time.Now()))[policy.AddressKey(guesser)]
	if rec.ID == "" || !rec.Closes.Equal(rec.LastAlert.Add(20*time.Minute)) {
		t.Fatalf("the guesser's incident %s closes at %v, last alert %v: want 20m after", rec.ID, rec.Closes, rec.LastAlert)
	}
	if _, err := os.Stat(h.cfg.Response.StateFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("observe mode wrote the state file: %v", err)
	}

	h.reloadWith(t, func(c *config.Config) { c.Mode = config.ModeEnforce })
	st, err := bans.ReadState(h.cfg.Response.StateFile)
	if err != nil {
		t.Fatal(err)
	}
	var saved []incident.Record
	if err := json.Unmarshal(st.Incidents, &saved); err != nil || len(saved) != 1 || saved[0].ID != rec.ID {
		t.Fatalf("incidents in the state file after the switch to enforce: %s (%v); want %s", st.Incidents, err, rec.ID)
	}
	if n := len(h.lines(t, "incidents not saved: the actions go on, but a restart before the next save may run them again")); n != 0 {
		t.Errorf("%d lines say the incidents were not saved", n)
	}
}

// A reload naming a secrets file every rotation would refuse (here a
// symlink to a file of someone else's choosing) is refused as at start:
// the running file stays, and the key is named.
func TestReloadRefusesUnsafeSecretsFile(t *testing.T) {
	srv, err := amitest.Start(amitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	h := startReloadable(t, srv, func(c *config.Config) { c.Mode = config.ModeEnforce }, nil)
	running := h.g.cfg.Load().Response.SecretsFile
	dir := t.TempDir()
	target := filepath.Join(dir, "elsewhere")
	if err := os.WriteFile(target, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "secrets.jsonl")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	r := h.reloadWith(t, func(c *config.Config) { c.Response.SecretsFile = link })
	if !slices.Equal(r.Refused, []string{"response.secrets_file"}) || slices.Contains(r.Applied, "response.secrets_file") {
		t.Fatalf("reload: %+v", r)
	}
	if got := h.g.cfg.Load().Response.SecretsFile; got != running {
		t.Fatalf("secrets file after the refused reload: %s, want the running %s", got, running)
	}
}
