package bans

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/testenv"
)

const crashEnv = "ASTGUARD_BANS_CRASH_CHILD"

// crashChild is the daemon that TestSIGKILLRestart kills, in a process of
// its own: it bans three addresses and sends itself SIGKILL from inside
// the firewall call of the third, after the ban was saved and before it
// was applied.
func crashChild(t *testing.T, path string) {
	fw := newFakeFW()
	fw.onBlock = func(a netip.Addr) {
		if a == third {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // never returns
		}
	}
	m, err := New(Options{Firewall: fw, StatePath: path, Logger: zerolog.New(os.Stderr)})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := ban(m, attack, time.Hour, "kept", "SIP/200"); err != nil {
		t.Fatal(err)
	}
	if _, err := ban(m, other, time.Millisecond, "expires before the restart", ""); err != nil {
		t.Fatal(err)
	}
	_, _ = ban(m, third, time.Hour, "saved, never applied", "")
	t.Fatal("still alive after SIGKILL")
}

// TestSIGKILLRestart kills a daemon process mid-ban and restarts over the
// same state file: every live ban comes back, the one saved but never
// applied gets applied, the expired one is gone with its rule.
func TestSIGKILLRestart(t *testing.T) {
	if path := os.Getenv(crashEnv); path != "" {
		crashChild(t, path)
		return
	}
	t.Parallel()
	path := filepath.Join(t.TempDir(), "bans.json")
	// A child that hangs instead of dying ends at its -test.timeout, with
	// its goroutines in the output, not killed by a signal.
	cmd := exec.Command(os.Args[0], "-test.run=^TestSIGKILLRestart$", "-test.count=1", "-test.timeout=1m")
	cmd.Env = append(os.Environ(), crashEnv+"="+path)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("child: %v\n%s", err, out)
	}
	ws, _ := ee.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v\n%s", err, out)
	}
	if got := addrsOf(mustState(t, path)); !slices.Equal(got, []netip.Addr{attack, other, third}) {
		t.Fatalf("state left by the killed daemon = %v", got)
	}
	// The 1 ms ban expires on the wall clock before the restart.
	var until time.Time
	for _, b := range mustState(t, path) {
		if b.Prefix.Addr() == other {
			until = b.Until
		}
	}
	testenv.WaitFor(t, "the 1 ms ban to expire", 10*time.Second, func() bool { return time.Now().After(until) })

	// The kernel kept the rules the child applied (KeepRulesOnSetup).
	fw := newFakeFW()
	fw.put(attack, "astguard: kept (SIP/200)")
	fw.put(other, "astguard: expires before the restart")
	lb := &logBuf{t: t}
	m, err := New(Options{Firewall: fw, StatePath: path, Logger: zerolog.New(lb)})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatalf("restart after SIGKILL: %v (stale lock?)", err)
	}
	defer m.Close(ctx)
	if got := addrsOf(m.List()); !slices.Equal(got, []netip.Addr{attack, third}) {
		t.Fatalf("bans after restart = %v", got)
	}
	if got := fw.addrs(); !slices.Equal(got, []netip.Addr{attack, third}) {
		t.Fatalf("firewall after restart = %v", got)
	}
	if got := addrsOf(mustState(t, path)); !slices.Equal(got, []netip.Addr{attack, third}) {
		t.Fatalf("state after restart = %v", got)
	}
	if b := m.List()[0]; b.Reason != "kept" || b.Extension != "SIP/200" {
		t.Fatalf("ban details lost: %+v", b)
	}
}
