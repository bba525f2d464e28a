package main

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/guard"
	"github.com/astguard/astguard/internal/testenv"
)

// TestNetnsDryRunTrialNeverBecomesReal is the administrator's path from a
// trial to production, with real iptables in a private network namespace
// (never the host's tables): a trial in enforce mode with the dry-run
// firewall records its bans; the guard then started with iptables in
// observe mode creates no chain at all, and in enforce mode puts no DROP
// rule in for the trial's bans: the trial's addresses still get through.
// The same holds for a version 1 state file, as guards before version 2
// wrote after a trial, while a version 1 ban whose rule the chain holds
// (it was real) stays applied.
func TestNetnsDryRunTrialNeverBecomesReal(t *testing.T) {
	t.Parallel()
	testenv.RequireCommand(t, "iptables", "ip6tables")
	chain := testenv.RandomChain()
	if !testenv.InNetns(t, chainEnv+"="+chain) {
		testenv.NoChainOnHost(t, chain)
		return
	}
	chain = os.Getenv(chainEnv)
	dir := t.TempDir()
	state := filepath.Join(dir, "bans.json")
	thief, guesser := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.5")

	// The trial: enforce mode, dry-run firewall, the recorded attack.
	data, err := os.ReadFile(fixtures + "attack-mixed.ami")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := amitest.Start(amitest.Options{Transcript: bytes.NewReader(data), Speed: 4, AutoPlay: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	trialCfg := writeConfig(t, dir, "trial.toml", srv.Addr(), "enforce", "dry-run", chain, state)
	stop := startGuard(t, trialCfg)
	waitState(t, state, thief, guesser)
	stop()
	st, err := bans.ReadState(state)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range st.Bans {
		if !b.DryRun {
			t.Fatalf("the trial recorded a real ban: %+v", b)
		}
	}
	t.Logf("the trial recorded %d dry-run bans", len(st.Bans))

	quiet, err := amitest.Start(amitest.Options{}) // an Asterisk with nothing to say
	if err != nil {
		t.Fatal(err)
	}
	defer quiet.Close()

	// Production, first in observe mode with iptables: no chain.
	stop = startGuard(t, writeConfig(t, dir, "observe.toml", quiet.Addr(), "observe", "iptables", chain, state))
	for _, bin := range []string{"iptables", "ip6tables"} {
		if out, err := exec.Command(bin, "-S", chain).CombinedOutput(); err == nil {
			t.Fatalf("observe mode created %s chain %s:\n%s", bin, chain, out)
		}
		if in := runOut(t, bin, "-S", "INPUT"); strings.Contains(in, chain) {
			t.Fatalf("observe mode put a jump to %s in %s INPUT:\n%s", chain, bin, in)
		}
	}
	if sets := testenv.Sets(t, chain); len(sets) > 0 {
		t.Fatalf("observe mode created the sets %v", sets)
	}
	stop()
	t.Logf("observe mode with iptables: chain %s does not exist, nor its sets", chain)

	// Then in enforce mode with iptables: the chain, no rule for the trial.
	enforce := writeConfig(t, dir, "enforce.toml", quiet.Addr(), "enforce", "iptables", chain, state)
	stop = startGuard(t, enforce)
	rules := testenv.Banned(t, chain)
	if rules != "" {
		t.Fatalf("enforce mode applied the trial's dry-run bans:\n%s", rules)
	}
	ln := listenUDP(t, "127.0.0.1:0")
	expectDelivered(t, ln, dialUDP(t, thief.String()+":0", ln.LocalAddr().String()), "a datagram from the trial's 127.0.0.2")
	var out, errOut bytes.Buffer
	if code := run([]string{"bans", "--config", enforce}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "127.0.0.2") {
		t.Fatalf("guard bans: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "127.0.0.2 ") && !strings.Contains(line, " dry-run ") {
			t.Fatalf("guard bans does not show the trial's ban as dry-run: %q", line)
		}
	}
	stop()
	t.Logf("enforce mode with iptables, after the trial:\n%s%s", rules, out.String())

	// A version 1 file: the trial's bans of a guard before version 2, and
	// one real ban whose rule is in the chain.
	real := netip.MustParseAddr("127.0.0.9")
	sh(t, "iptables", "-A", chain, "-s", real.String(), "-m", "comment", "--comment", "astguard: applied before the upgrade", "-j", "DROP")
	since, until := time.Now().UTC().Add(-time.Hour).Format(time.RFC3339), time.Now().UTC().Add(23*time.Hour).Format(time.RFC3339)
	v1 := fmt.Sprintf(`{"version":1,"bans":[
{"addr":%q,"since":%q,"until":%q,"reason":"call_rate critical: 5 calls started in 1s","extension":"SIP/200"},
{"addr":%q,"since":%q,"until":%q,"reason":"auth_failures critical: 5 failed authentications in 1m"},
{"addr":%q,"since":%q,"until":%q,"reason":"applied before the upgrade"}]}`,
		thief, since, until, guesser, since, until, real, since, until)
	if err := os.WriteFile(state, []byte(v1), 0o600); err != nil {
		t.Fatal(err)
	}
	stop = startGuard(t, enforce)
	rules = testenv.Banned(t, chain)
	stop()
	if strings.Contains(rules, thief.String()) || strings.Contains(rules, guesser.String()) || !strings.Contains(rules, real.String()) {
		t.Fatalf("after a version 1 state file, %s drops:\n%s\nwant only the real ban", chain, rules)
	}
	st, err = bans.ReadState(state)
	if err != nil || st.Version != bans.StateVersion {
		t.Fatalf("state after the migration: version %d, %v", st.Version, err)
	}
	for _, b := range st.Bans {
		if b.DryRun != (b.Prefix.Addr() != real) {
			t.Errorf("migrated %s: dry_run %v", b.Target(), b.DryRun)
		}
	}
	t.Logf("version 1 state file migrated; the chain holds:\n%s", rules)
}

// writeConfig writes a configuration for the trial test and returns its path.
func writeConfig(t *testing.T, dir, name, ami, mode, fw, chain, state string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	toml := fmt.Sprintf(`mode = %q
[ami]
address = %q
secret = "guardpass"
reconnect_interval = "10m"
[response]
firewall = %q
chain = %q
state_file = %q
secrets_file = %q
admin_socket = %q
`, mode, ami, fw, chain, state, filepath.Join(dir, "secrets.jsonl"), filepath.Join(dir, "admin.sock"))
	if err := os.WriteFile(path, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startGuard runs the guard with the configuration at path until the
// returned stop is called; it returns once the guard is started (its bans
// restored and applied).
func startGuard(t *testing.T, path string) (stop func()) {
	t.Helper()
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- guard.Run(ctx, guard.Options{Config: cfg, Logger: zerolog.New(os.Stderr).Level(zerolog.WarnLevel),
			Started: func(*guard.Guard) { close(started) }})
	}()
	select {
	case <-started:
	case err := <-done:
		cancel()
		t.Fatalf("guard did not start: %v", err)
	}
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("guard: %v", err)
		}
	}
}

// waitState polls the state file until it bans every one of addrs.
func waitState(t *testing.T, path string, addrs ...netip.Addr) {
	t.Helper()
	testenv.WaitFor(t, fmt.Sprintf("the state file to ban %v", addrs), 30*time.Second, func() bool {
		st, _ := bans.ReadState(path)
		for _, a := range addrs {
			if !slices.ContainsFunc(st.Bans, func(b bans.Ban) bool { return b.Prefix.Addr() == a }) {
				return false
			}
		}
		return true
	})
}

func runOut(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}
