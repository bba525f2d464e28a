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

// TestNetnsObserveSetsUpNoFirewall runs the guard with the real firewall
// the configuration names (kernel address sets, and one rule per ban), in
// a private network namespace (never the host's tables): in observe mode,
// through a whole attack, no chain, no jump and no set appear. A reload to
// enforce creates them and applies the real ban of the state file, not its
// dry-run ban; a reload back to observe leaves it in place.
func TestNetnsObserveSetsUpNoFirewall(t *testing.T) {
	for _, match := range []string{config.MatchIPSet, config.MatchRules} {
		t.Run(match, func(t *testing.T) {
			t.Parallel()
			testenv.RequireCommand(t, "iptables", "ip6tables", "ipset")
			chain := testenv.RandomChain()
			if !testenv.InNetns(t, chainEnv+"="+chain) {
				testenv.NoChainOnHost(t, chain)
				return
			}
			netnsObserve(t, match, os.Getenv(chainEnv))
		})
	}
}

func netnsObserve(t *testing.T, match, chain string) {
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
	cfg.Response.FirewallMatch = match
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
	if sets := testenv.Sets(t, chain); len(sets) > 0 {
		t.Fatalf("observe mode: the sets %v exist", sets)
	}
	t.Logf("observe mode, after the attack: no chain %s, no jump, no set", chain)

	r.setMode(config.ModeEnforce)
	banned := testenv.Banned(t, chain)
	if !strings.Contains(banned, "198.51.100.7") || strings.Contains(banned, "198.51.100.8") {
		t.Fatalf("after the reload to enforce, %s drops:\n%s\nwant the real ban and not the dry-run ban", chain, banned)
	}
	if match == config.MatchIPSet && !strings.Contains(banned, "in set "+chain+"-a4") {
		t.Fatalf("firewall_match = ipset, but the ban is not in a set:\n%s", banned)
	}
	if in := netnsSh(t, "iptables", "-S", "INPUT"); !strings.Contains(in, "-A INPUT -j "+chain) {
		t.Fatalf("after the reload to enforce, no jump to %s:\n%s", chain, in)
	}
	t.Logf("enforce mode:\n%s", banned)

	r.setMode(config.ModeObserve)
	if banned := testenv.Banned(t, chain); !strings.Contains(banned, "198.51.100.7") {
		t.Fatalf("the reload to observe lifted the ban:\n%s", banned)
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
