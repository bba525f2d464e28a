package guard

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/metrics"
	"github.com/astguard/astguard/internal/testenv"
)

// chainEnv passes the chain name the test picked to its child.
const chainEnv = "ASTGUARD_TEST_CHAIN"

// TestNetnsObserveSetsUpNoFirewall runs the guard with the real iptables
// firewall the configuration names, in a private network namespace (never
// the host's tables): in observe mode, through a whole attack, no chain
// and no jump appear. A reload to enforce creates them and applies the real
// ban of the state file, not its dry-run ban; a reload back to observe
// leaves the rule in place.
func TestNetnsObserveSetsUpNoFirewall(t *testing.T) {
	t.Parallel()
	testenv.RequireCommand(t, "iptables", "ip6tables")
	chain := testenv.RandomChain()
	if !testenv.InNetns(t, chainEnv+"="+chain) {
		testenv.NoChainOnHost(t, chain)
		return
	}
	chain = os.Getenv(chainEnv)

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
	cfg.Response.Firewall = config.FirewallIPTables
	cfg.Response.Chain = chain
	seedState(t, cfg.Response.StateFile)
	r := runReloadable(t, srv, cfg, nil) // the firewall the configuration names

	waitFor(t, "would outcomes of the attack", 20*time.Second, func() bool {
		return metricsValue(gathered(t, r.g), metrics.NameActions, "action=block_ip", "result=would") >= 2
	})
	for _, bin := range []string{"iptables", "ip6tables"} {
		if out, err := exec.Command(bin, "-S", chain).CombinedOutput(); err == nil {
			t.Fatalf("observe mode: %s chain %s exists:\n%s", bin, chain, out)
		}
		if in := netnsSh(t, bin, "-S", "INPUT"); strings.Contains(in, chain) {
			t.Fatalf("observe mode: %s INPUT jumps to %s:\n%s", bin, chain, in)
		}
	}
	t.Logf("observe mode, after the attack: no chain %s, no jump", chain)

	r.setMode(config.ModeEnforce)
	rules := netnsSh(t, "iptables", "-S", chain)
	if !strings.Contains(rules, "-s 198.51.100.7/32") || strings.Contains(rules, "198.51.100.8") {
		t.Fatalf("after the reload to enforce, %s holds:\n%s\nwant the real ban's DROP rule and not the dry-run ban's", chain, rules)
	}
	if in := netnsSh(t, "iptables", "-S", "INPUT"); !strings.Contains(in, "-A INPUT -j "+chain) {
		t.Fatalf("after the reload to enforce, no jump to %s:\n%s", chain, in)
	}
	t.Logf("enforce mode:\n%s", rules)

	r.setMode(config.ModeObserve)
	if rules := netnsSh(t, "iptables", "-S", chain); !strings.Contains(rules, "-s 198.51.100.7/32") {
		t.Fatalf("the reload to observe lifted the ban:\n%s", rules)
	}
}

func netnsSh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}
