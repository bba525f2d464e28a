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
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/metrics"
)

// gathered is the guard's metrics as Prometheus would read them, by name.
func gathered(t *testing.T, g *Guard) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := g.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]*dto.MetricFamily, len(fams))
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// outcomes decodes the guard's "action outcome" log lines.
func outcomes(logs string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(logs, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["message"] == "action outcome" {
			out = append(out, m)
		}
	}
	return out
}

// With a dry-run firewall in enforce mode, block_ip does nothing real: its
// outcome is would (counted as would, never as done), the bans are
// recorded as dry-run bans, and none counts as active.
func TestDryRunFirewallOutcomeIsWould(t *testing.T) {
	t.Parallel()
	h := startGuardWith(t, "attack-mixed.ami", 4, nil, firewall.NewDryRun(zerolog.Nop()))
	g := <-h.guard
	waitFor(t, "block_ip outcomes for 127.0.0.2 and 127.0.0.5", 20*time.Second, func() bool {
		return metricsValue(gathered(t, g), metrics.NameActions, "action=block_ip", "result=would") >= 2
	})
	fams := gathered(t, g)
	if n := metricsValue(fams, metrics.NameActions, "action=block_ip", "result=done"); n > 0 {
		t.Errorf("%v block_ip outcomes counted as done with a dry-run firewall", n)
	}
	if n := metricsValue(fams, metrics.NameBansActive); n != 0 {
		t.Errorf("astguard_bans_active = %v with only dry-run bans, want 0", n)
	}
	list := g.Bans().List()
	if len(list) == 0 {
		t.Fatal("no ban recorded")
	}
	for _, b := range list {
		if !b.DryRun {
			t.Errorf("ban through a dry-run firewall recorded as real: %+v", b)
		}
	}
	found := false
	for _, o := range outcomes(h.logs.String()) {
		if o["action"] != "block_ip" {
			continue
		}
		if o["result"] != "would" {
			t.Errorf("block_ip outcome %v with a dry-run firewall", o["result"])
		}
		if o["target"] == "127.0.0.2" && o["detail"] == "dry-run firewall: would drop 127.0.0.2 for 24h" {
			found = true
		}
	}
	if !found {
		t.Error(`no block_ip outcome "dry-run firewall: would drop 127.0.0.2 for 24h"`)
	}
}

// spyFirewall records every call the guard makes to its firewall.
type spyFirewall struct {
	kernelFirewall
	mu    sync.Mutex
	calls []string
}

func (s *spyFirewall) note(c string) {
	s.mu.Lock()
	s.calls = append(s.calls, c)
	s.mu.Unlock()
}

func (s *spyFirewall) callList() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

func (s *spyFirewall) Setup(ctx context.Context) error {
	s.note("setup")
	return s.kernelFirewall.Setup(ctx)
}

func (s *spyFirewall) Block(ctx context.Context, entries ...firewall.Entry) error {
	for _, e := range entries {
		s.note("block " + firewall.PrefixString(e.Prefix))
	}
	return s.kernelFirewall.Block(ctx, entries...)
}

func (s *spyFirewall) Unblock(ctx context.Context, prefixes ...netip.Prefix) error {
	for _, p := range prefixes {
		s.note("unblock " + firewall.PrefixString(p))
	}
	return s.kernelFirewall.Unblock(ctx, prefixes...)
}

func (s *spyFirewall) Blocked(ctx context.Context) ([]firewall.Entry, error) {
	s.note("blocked")
	return s.kernelFirewall.Blocked(ctx)
}

func (s *spyFirewall) Rules(ctx context.Context) ([]netip.Prefix, error) {
	s.note("rules")
	return s.kernelFirewall.Rules(ctx)
}

func (s *spyFirewall) Teardown(ctx context.Context) error {
	s.note("teardown")
	return s.kernelFirewall.Teardown(ctx)
}

// seedState writes a version 2 state file with a real ban of 198.51.100.7
// and a dry-run ban of 198.51.100.8, both live for an hour.
func seedState(t *testing.T, path string) []byte {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Second)
	st := bans.State{Version: bans.StateVersion, Bans: []bans.Ban{
		{Prefix: netip.MustParsePrefix("198.51.100.7/32"), Since: now, Until: now.Add(time.Hour), Reason: "real", Origin: bans.OriginAstguard},
		{Prefix: netip.MustParsePrefix("198.51.100.8/32"), Since: now, Until: now.Add(time.Hour), Reason: "trial", DryRun: true, Origin: bans.OriginAstguard},
	}}
	raw, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return raw
}

// reloadable runs the guard with cfg against srv; setMode reloads it with
// another mode and returns once the guard runs with it.
type reloadable struct {
	g       *Guard
	logs    *syncBuffer
	setMode func(mode string)
}

func runReloadable(t *testing.T, srv *amitest.Server, cfg *config.Config, fw firewall.Firewall) *reloadable {
	t.Helper()
	var next atomic.Pointer[config.Config]
	reload := make(chan struct{})
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	gch := make(chan *Guard, 1)
	go func() {
		done <- Run(ctx, Options{Config: cfg, Reload: reload, Logger: zerolog.New(logs), Firewall: fw,
			Started: func(g *Guard) { gch <- g },
			Load:    func() (*config.Config, error) { return next.Load(), nil }})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("guard: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("guard did not stop within 5 s")
		}
	})
	var g *Guard
	select {
	case g = <-gch:
	case err := <-done:
		t.Fatalf("guard did not start: %v", err)
	}
	return &reloadable{g: g, logs: logs, setMode: func(mode string) {
		c := *cfg
		c.Mode = mode
		next.Store(&c)
		reload <- struct{}{}
		waitFor(t, "the reload to "+mode, 10*time.Second, func() bool { return g.cfg.Load().Mode == mode })
	}}
}

// observeConfig is the guard's configuration in observe mode against srv,
// its files in dir.
func observeConfig(srv *amitest.Server, dir string) *config.Config {
	cfg := config.Default()
	cfg.Mode = config.ModeObserve
	cfg.AMI.Address, cfg.AMI.Secret = srv.Addr(), "guardpass"
	cfg.AMI.ReconnectInterval = config.Duration(10 * time.Minute)
	cfg.Response.StateFile = filepath.Join(dir, "bans.json")
	cfg.Response.SecretsFile = filepath.Join(dir, "secrets.jsonl")
	cfg.Response.AdminSocket = filepath.Join(dir, "admin.sock")
	return cfg
}

// Observe mode: the guard reads the bans but does not set the firewall up,
// calls it for nothing, writes no state. A reload to enforce sets it up and
// applies the real bans only; a reload back to observe lifts nothing.
func TestObserveModeLeavesFirewallAlone(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(transcripts + "attack-mixed.ami")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := amitest.Start(amitest.Options{Transcript: bytes.NewReader(data), Speed: 4, AutoPlay: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cfg := observeConfig(srv, t.TempDir())
	seeded := seedState(t, cfg.Response.StateFile)
	fw := &spyFirewall{kernelFirewall: kernelFirewall{firewall.NewDryRun(zerolog.Nop())}}
	r := runReloadable(t, srv, cfg, fw)

	if n := len(r.g.Bans().List()); n != 2 {
		t.Fatalf("observe mode lists %d bans from the state file, want 2", n)
	}
	waitFor(t, "would outcomes of the attack", 20*time.Second, func() bool {
		return metricsValue(gathered(t, r.g), metrics.NameActions, "action=block_ip", "result=would") >= 2
	})
	if calls := fw.callList(); len(calls) != 0 {
		t.Fatalf("observe mode called the firewall: %v", calls)
	}
	if got, _ := os.ReadFile(cfg.Response.StateFile); !bytes.Equal(got, seeded) {
		t.Fatal("observe mode wrote the state file")
	}

	r.setMode(config.ModeEnforce)
	calls := fw.callList()
	if len(calls) == 0 || calls[0] != "setup" {
		t.Fatalf("enforce: firewall calls %v, want Setup first", calls)
	}
	entries, _ := fw.Blocked(context.Background())
	applied := addrsOf(entries)
	if !slices.Contains(applied, netip.MustParseAddr("198.51.100.7")) || slices.Contains(applied, netip.MustParseAddr("198.51.100.8")) {
		t.Fatalf("firewall after the reload to enforce = %v, want the real ban applied and the dry-run one not", applied)
	}

	r.setMode(config.ModeObserve)
	before := len(fw.callList())
	r.g.Bans().SetNever(nil)
	if _, err := r.g.Bans().Ban(context.Background(), bans.Request{Addr: netip.MustParseAddr("198.51.100.9"), TTL: time.Hour}); err == nil {
		t.Fatal("a ban was taken in observe mode")
	}
	if n := len(fw.callList()); n != before {
		t.Fatalf("observe mode called the firewall: %v", fw.callList()[before:])
	}
	if entries, _ := fw.Blocked(context.Background()); !slices.Contains(addrsOf(entries), netip.MustParseAddr("198.51.100.7")) {
		t.Fatalf("the reload to observe lifted a ban: %v", applied)
	}
}
