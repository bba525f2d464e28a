package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/guard"
	"github.com/astguard/astguard/internal/testenv"
)

const killChild = "ASTGUARD_KILL_CHILD"

// The guard killed with SIGKILL in the middle of an incident and started
// again: every ban is restored and applied, none lost, expired ones gone.
func TestSIGKILLRestartKeepsBans(t *testing.T) {
	if cfgPath := os.Getenv(killChild); cfgPath != "" {
		// Child: run the guard until killed.
		cfg, err := config.Load(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		err = guard.Run(context.Background(), guard.Options{Config: cfg, Logger: zerolog.New(os.Stderr).Level(zerolog.WarnLevel), Firewall: firewall.NewDryRun(zerolog.Nop())})
		t.Fatalf("the guard ended before it was killed: %v", err)
	}
	t.Parallel()
	data, err := os.ReadFile(fixtures + "attack-mixed.ami")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := amitest.Start(amitest.Options{Transcript: bytes.NewReader(data), Speed: 4, AutoPlay: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	dir := t.TempDir()
	state := filepath.Join(dir, "bans.json")
	// A ban that expired while the guard was down.
	old := []bans.Ban{{Prefix: netip.MustParsePrefix("198.51.100.66/32"), Since: time.Now().Add(-48 * time.Hour),
		Until: time.Now().Add(-time.Hour), Reason: "old", DryRun: true, Origin: bans.OriginAstguard}}
	raw, _ := json.Marshal(bans.State{Version: bans.StateVersion, Bans: old})
	if err := os.WriteFile(state, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "guard.toml")
	toml := fmt.Sprintf("mode = \"enforce\"\n[ami]\naddress = %q\nsecret = \"guardpass\"\nreconnect_interval = \"10m\"\n"+
		"[response]\nfirewall = \"dry-run\"\nstate_file = %q\nsecrets_file = %q\nadmin_socket = %q\n",
		srv.Addr(), state, filepath.Join(dir, "secrets.jsonl"), filepath.Join(dir, "admin.sock"))
	if err := os.WriteFile(cfgPath, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := bans.ReadState(state); err != nil {
		t.Fatalf("the seeded state file does not parse: %v", err)
	}

	child := exec.Command(os.Args[0], "-test.run=^TestSIGKILLRestartKeepsBans$", "-test.count=1")
	child.Env = append(os.Environ(), killChild+"="+cfgPath)
	out := &lockedBuffer{}
	child.Stdout, child.Stderr = out, out
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	t.Cleanup(func() { _ = child.Process.Kill() })
	want := []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.4"), netip.MustParseAddr("127.0.0.5")}
	testenv.WaitFor(t, fmt.Sprintf("the child to ban %v", want), 30*time.Second, func() bool {
		select {
		case err := <-exited:
			t.Fatalf("the child guard ended before it banned %v: %v\n%s", want, err, out.String())
		default:
		}
		st, _ := bans.ReadState(state)
		n := 0
		for _, b := range st.Bans {
			if slices.Contains(want, b.Prefix.Addr()) {
				n++
			}
		}
		return n == len(want)
	})
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited

	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	fw := firewall.NewDryRun(zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	restored := make(chan []bans.Ban, 1)
	go func() {
		done <- guard.Run(ctx, guard.Options{Config: cfg, Logger: zerolog.Nop(), Firewall: fw,
			Started: func(g *guard.Guard) { restored <- g.Bans().List() }})
	}()
	var got []bans.Ban
	select {
	case got = <-restored:
	case err := <-done:
		t.Fatalf("the restarted guard did not start: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var addrs []netip.Addr
	for _, b := range got {
		addrs = append(addrs, b.Prefix.Addr())
	}
	for _, w := range want {
		if !slices.Contains(addrs, w) {
			t.Errorf("ban of %s lost across SIGKILL: restored %v", w, addrs)
		}
	}
	if slices.Contains(addrs, netip.MustParseAddr("198.51.100.66")) {
		t.Error("an expired ban was restored")
	}
	applied, _ := fw.Rules(context.Background())
	for _, w := range want {
		if !slices.Contains(applied, netip.PrefixFrom(w, w.BitLen())) {
			t.Errorf("restored ban of %s not applied to the firewall (%v)", w, applied)
		}
	}
}
